!> latentda example: a host that keeps its own minimiser and uses latentda only as its B operator (lda_bsqrt,
!> lda_bsqrt_ad) and its observation operator (lda_obs_h, lda_obs_h_ad): the control-variable 3D-Var of PDAF and
!> most DA codes, with a conjugate-gradient solver of its own. See docs/b-operator.md, "latentda as the cvt of a
!> host's 3D-Var".
!>
!>   J(v) = 1/2 v.v + 1/2 sum_i ((d_i - H_i U v) / sigma_i)^2,   d = y - H x_b,   x_a = x_b + U v_a
!>
!> The program learns everything about the grid and the state layout from the library (lda_grid_info,
!> lda_var_count, lda_var_name, lda_var_layout), binds its background state vector variable by variable (the state
!> layout is the layout of Fortran (nlon, nlat, nlev) arrays, so pointer views into one vector bind directly), and
!> stops its CG on the gradient, above the measured float32 noise floor of U (lda_bsqrt_noise), never on a change
!> of J.
!>
!> Build (after `cargo build --release`), from the repository root:
!>   mkdir -p target/f && gfortran -std=f2008 -O2 -Jtarget/f fortran/latentda.f90 examples/fortran/host_minimiser.f90 \
!>     -o target/f/host_minimiser -Ltarget/release -llatentda -lnetcdf -lm -Wl,-rpath,$PWD/target/release
!> Run:
!>   target/f/host_minimiser BUNDLE BACKGROUND.bin OBS.csv ANALYSIS.bin [--options TOML] [--tol 1e-5] [--maxit 200]
!> BACKGROUND.bin: the background as raw float64 in state layout (lda_state_size values); OBS.csv: var,lat,lon,
!> level,value,sigma rows; ANALYSIS.bin: x_a written in the same layout.
program host_minimiser
  use, intrinsic :: iso_c_binding, only: c_double, c_int32_t
  use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan
  use latentda
  implicit none

  type(lda_context) :: ctx
  character(len=1024) :: bundle, bgfile, obsfile, outfile, arg, options
  character(len=512) :: msg
  character(len=64) :: name
  real(c_double), allocatable, target :: xb(:)
  real(c_double), pointer, contiguous :: f2(:,:), f3(:,:,:)
  real(c_double), allocatable :: v(:), r(:), p(:), q(:), dx(:), g(:)
  real(c_double), allocatable :: lat(:), lon(:), level(:), value(:), sigma(:), hx(:), d(:), rinv(:)
  integer(c_int32_t), allocatable :: var(:), qc(:)
  real(c_double) :: tol, rr, rr_new, alpha, g0, j0, j1, un, utn, adj, floor
  integer :: ierr, i, it, maxit, nargs, un_out, kind, vert, nlat, nlon, nlev, nvar, nstate, ncv, off, length, lev

  ! ---- arguments
  nargs = command_argument_count()
  if (nargs < 4) then
    write(*, '(a)') 'usage: host_minimiser BUNDLE BACKGROUND.bin OBS.csv ANALYSIS.bin [--options TOML] [--tol T] [--maxit N]'
    error stop 2
  end if
  call get_command_argument(1, bundle)
  call get_command_argument(2, bgfile)
  call get_command_argument(3, obsfile)
  call get_command_argument(4, outfile)
  options = ''
  tol = 1.0e-5_c_double
  maxit = 200
  i = 5
  do while (i < nargs)
    call get_command_argument(i, arg)
    select case (trim(arg))
    case ('--options')
      call get_command_argument(i + 1, options)
    case ('--tol')
      call get_command_argument(i + 1, arg)
      read(arg, *) tol
    case ('--maxit')
      call get_command_argument(i + 1, arg)
      read(arg, *) maxit
    end select
    i = i + 2
  end do

  ! ---- the library's layout: grid, variables, their blocks of the state vector
  call lda_open(ctx, trim(bundle), ierr, options=trim(options))
  call check('lda_open')
  call lda_grid_info(ctx, kind, nlat, nlon, vert, nlev, ierr)
  call check('lda_grid_info')
  write(*, '(a, i0, a, i0, a, i0, 2a)') 'grid ', nlat, ' x ', nlon, ', ', nlev, ' levels, ', &
       merge('gaussian', 'regular ', kind == LDA_GRID_GAUSSIAN)
  nstate = lda_state_dim(ctx, ierr)      ! default integers (PDAF's dim_p, dim_cvec)
  call check('lda_state_dim')
  ncv = lda_control_dim(ctx, ierr)
  call check('lda_control_dim')
  write(*, '(a, i0, a, i0)') 'state size ', nstate, ', control size ', ncv

  ! ---- the background, bound variable by variable through pointer views of one state vector
  allocate(xb(nstate))
  open(newunit=un_out, file=trim(bgfile), access='stream', form='unformatted', status='old', action='read')
  read(un_out) xb
  close(un_out)
  call lda_var_count(ctx, nvar, ierr)
  call check('lda_var_count')
  do i = 0, nvar - 1
    call lda_var_name(ctx, i, name, ierr)
    call check('lda_var_name')
    call lda_var_layout(ctx, i, lev, off, length, ierr)
    call check('lda_var_layout')
    write(*, '(a, i0, 3a, i0, a, i0, a, i0, a)') 'variable ', i, ' ', trim(name), ': levels ', lev, ', x(', off + 1, &
         ':', off + length, ')'
    if (lev == 0) then
      f2(1:nlon, 1:nlat) => xb(off + 1:off + length)
      call lda_bind_field(ctx, trim(name), f2, ierr)
    else
      f3(1:nlon, 1:nlat, 1:lev) => xb(off + 1:off + length)
      call lda_bind_field(ctx, trim(name), f3, ierr)
    end if
    call check('lda_bind_field')
  end do

  ! ---- observations, and their innovations d = y - H x_b from latentda's own H (geometric QC included)
  call read_obs(trim(obsfile))
  call lda_set_obs(ctx, var, lat, lon, level, value, sigma, ierr)
  call check('lda_set_obs')
  allocate(hx(size(var)), qc(size(var)), d(size(var)), rinv(size(var)))
  call lda_obs_h(ctx, hx, ierr, qc=qc)      ! x absent: the bound background
  call check('lda_obs_h')
  where (qc == LDA_QC_USED)
    d = value - hx
    rinv = 1.0_c_double / sigma**2
  elsewhere
    d = 0
    rinv = 0
  end where
  write(*, '(a, i0, a, i0)') 'observations ', size(var), ', used ', count(qc == LDA_QC_USED)

  ! ---- the float32 noise floor of U sets how far the gradient can be reduced
  call lda_bsqrt_noise(ctx, un, utn, adj, ierr)
  call check('lda_bsqrt_noise')
  floor = 10 * max(un, utn, adj)
  write(*, '(a, 3es10.2)') 'noise floor of U, U^T, adjoint:', un, utn, adj
  if (tol < floor) then
    write(*, '(a, es10.2, a, es10.2)') 'gradient tolerance ', tol, ' raised to 10x the noise floor ', floor
    tol = floor
  end if

  ! ---- conjugate gradients on (I + U^T H^T R^-1 H U) v = U^T H^T R^-1 d, from v = 0
  allocate(v(ncv), r(ncv), p(ncv), q(ncv), dx(nstate), g(ncv))
  v = 0
  call grad_obs(d * rinv, r)              ! r = b - A v = U^T H^T R^-1 d at v = 0 (= -grad J)
  p = r
  rr = dot_product(r, r)
  g0 = sqrt(rr)
  j0 = cost(v)
  write(*, '(a, es22.14, a, es12.4)') 'J initial = ', j0, '  |grad J| = ', g0
  do it = 1, maxit
    call hessian(p, q)
    alpha = rr / dot_product(p, q)
    v = v + alpha * p
    r = r - alpha * q
    rr_new = dot_product(r, r)
    write(*, '(a, i4, a, es12.4)') 'cg ', it, '  |g|/|g0| = ', sqrt(rr_new) / g0
    if (sqrt(rr_new) <= tol * g0) exit
    p = r + (rr_new / rr) * p
    rr = rr_new
  end do

  ! ---- the recomputed gradient and cost at the analysis, and x_a = x_b + U v
  call hessian(v, g)
  call grad_obs(d * rinv, q)
  g = g - q
  j1 = cost(v)
  write(*, '(a, es22.14, a, es12.4, a, i0, a)') 'J final = ', j1, '  recomputed |grad J|/|grad J0| = ', &
       sqrt(dot_product(g, g)) / g0, '  (', min(it, maxit), ' CG iterations)'
  call lda_bsqrt(ctx, v, dx, ierr)
  call check('lda_bsqrt')
  open(newunit=un_out, file=trim(outfile), access='stream', form='unformatted', status='replace')
  write(un_out) xb + dx
  close(un_out)
  call lda_close(ctx)

contains

  !> q = (I + U^T H^T R^-1 H U) p: one lda_bsqrt, one H, one H^T and one lda_bsqrt_ad.
  subroutine hessian(pv, qv)
    real(c_double), intent(in) :: pv(:)
    real(c_double), intent(out) :: qv(:)
    real(c_double) :: hdx(size(var))
    call lda_bsqrt(ctx, pv, dx, ierr)
    call check('lda_bsqrt')
    call lda_obs_h(ctx, hdx, ierr, x=dx)
    call check('lda_obs_h')
    where (qc /= LDA_QC_USED) hdx = 0
    call grad_obs(hdx * rinv, qv)
    qv = pv + qv
  end subroutine hessian

  !> w = U^T H^T y for observation-space y (one lda_obs_h_ad and one lda_bsqrt_ad).
  subroutine grad_obs(y, w)
    real(c_double), intent(in) :: y(:)
    real(c_double), intent(out) :: w(:)
    call lda_obs_h_ad(ctx, y, dx, ierr)
    call check('lda_obs_h_ad')
    call lda_bsqrt_ad(ctx, dx, w, ierr)
    call check('lda_bsqrt_ad')
  end subroutine grad_obs

  !> J(v) = 1/2 v.v + 1/2 sum ((d - H U v) / sigma)^2 over the used observations.
  real(c_double) function cost(cv)
    real(c_double), intent(in) :: cv(:)
    real(c_double) :: hdx(size(var))
    call lda_bsqrt(ctx, cv, dx, ierr)
    call check('lda_bsqrt')
    call lda_obs_h(ctx, hdx, ierr, x=dx)
    call check('lda_obs_h')
    where (qc /= LDA_QC_USED) hdx = 0
    cost = 0.5_c_double * dot_product(cv, cv) + 0.5_c_double * sum(rinv * (d - hdx)**2)
  end function cost

  subroutine check(what)
    character(len=*), intent(in) :: what
    if (ierr == LDA_OK) return
    call lda_last_error(ctx, msg)
    write(*, '(a, i0, 4a)') 'latentda error ', ierr, ' in ', what, ': ', trim(msg)
    call lda_close(ctx)
    error stop 1
  end subroutine check

  !> Reads var,lat,lon,level,value,sigma rows (empty level: surface variable); unknown names get id -1.
  subroutine read_obs(path)
    character(len=*), intent(in) :: path
    character(len=1024) :: line
    integer :: u, ios, n, c(5), j, m, st
    n = 0
    open(newunit=u, file=path, status='old', action='read')
    read(u, '(a)')
    do
      read(u, '(a)', iostat=ios) line
      if (ios /= 0) exit
      if (len_trim(line) > 0) n = n + 1
    end do
    allocate(var(n), lat(n), lon(n), level(n), value(n), sigma(n))
    rewind(u)
    read(u, '(a)')
    m = 0
    do while (m < n)
      read(u, '(a)') line
      if (len_trim(line) == 0) cycle
      m = m + 1
      c(1) = index(line, ',')
      do j = 2, 5
        c(j) = c(j - 1) + index(line(c(j - 1) + 1:), ',')
      end do
      var(m) = lda_var_index(ctx, line(1:c(1) - 1), st)
      read(line(c(1) + 1:c(2) - 1), *) lat(m)
      read(line(c(2) + 1:c(3) - 1), *) lon(m)
      level(m) = ieee_value(level(m), ieee_quiet_nan)
      if (c(4) > c(3) + 1) read(line(c(3) + 1:c(4) - 1), *) level(m)
      read(line(c(4) + 1:c(5) - 1), *) value(m)
      read(line(c(5) + 1:), *) sigma(m)
    end do
    close(u)
  end subroutine read_obs

end program host_minimiser
