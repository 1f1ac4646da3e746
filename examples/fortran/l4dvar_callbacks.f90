!> latentda example: latent 4D-Var with the host's own forecast model, its tangent-linear and its adjoint, given to
!> latentda as bind(C) callbacks (lda_set_step_model). latentda supplies the latent B (control z = z_b + s w, decoded
!> increment); the host's model carries the increment through the window.
!>
!> The toy model: every field is advected eastward by upwind differences with Courant number 0.4 per 6 h step
!> (x_next(i) = (1 - c) x(i) + c x(i - 1), periodic in longitude), linear, so its TL is itself and its AD the
!> transpose. The host's context (the Courant number, a call counter, a failure switch) reaches the callbacks
!> through the `user` pointer.
!>
!> A twin experiment on a fixture grid (u, t on nlev levels and ps): the input file (stream, native byte order)
!> holds nlon, nlat, nlev (int32), lat(nlat), lon(nlon), lev(nlev), then the background and the truth at the
!> analysis time (float64, state layout: u, t, ps, each a (nlon, nlat[, nlev]) block). The program advects the
!> truth with its model to 6 h and 12 h, observes u, t and ps there at grid points, and then
!>   1. runs lda_l4dvar_check: the adjoint test of its own step (float64, must be ~1e-16) and of the chained
!>      transform latent B -> decoder -> model steps (float32 graphs, < 1e-5);
!>   2. runs lda_analyse with method 'l4dvar' (observation times from lda_set_obs_times): the analysis at time 0
!>      must be closer to the truth than the background for every variable;
!>   3. makes its step callback fail: lda_analyse returns LDA_ERR_BACKEND and the fields are unchanged.
!> It prints one line per check and stops with status 1 if one fails.
!>
!> Build (after cargo build --release; tests/coupling.rs does the same):
!>   gfortran -std=f2008 -O2 -Jtarget/f fortran/latentda.f90 examples/fortran/l4dvar_callbacks.f90 \
!>     -o target/f/lda_l4dvar -Ltarget/release -llatentda -Wl,-rpath,$PWD/target/release
!> Run: target/f/lda_l4dvar tests/fixtures/tanh INPUT.bin

!> The host's forecast model and its callbacks.
module toy_model
  use, intrinsic :: iso_c_binding, only: c_ptr, c_int32_t, c_size_t, c_double, c_f_pointer
  implicit none
  private
  public :: model_context, toy_step, toy_step_tl, toy_step_ad, advect

  !> What the callbacks need, passed as `user`.
  type, public :: model_context
    integer :: nlon = 0                  !< points per latitude row (the advection runs along rows)
    real(c_double) :: courant = 0.4d0    !< Courant number of one step
    integer :: calls = 0                 !< callbacks run so far
    logical :: fail = .false.            !< make the step callback report a failure
  end type model_context

contains

  !> y = A x (transpose = .false.) or A^T x, A the upwind advection along each row of nlon points.
  subroutine advect(m, x, y, transpose)
    type(model_context), intent(in) :: m
    real(c_double), intent(in) :: x(:)
    real(c_double), intent(out) :: y(:)
    logical, intent(in) :: transpose
    integer :: r, i, j
    do r = 0, size(x) / m%nlon - 1
      do i = 1, m%nlon
        if (transpose) then
          j = merge(1, i + 1, i == m%nlon)
        else
          j = merge(m%nlon, i - 1, i == 1)
        end if
        y(r * m%nlon + i) = (1 - m%courant) * x(r * m%nlon + i) + m%courant * x(r * m%nlon + j)
      end do
    end do
  end subroutine advect

  !> x_next = M(x)
  integer(c_int32_t) function toy_step(user, n, x, x_next) bind(C)
    type(c_ptr), value :: user
    integer(c_size_t), value :: n
    real(c_double), intent(in) :: x(n)
    real(c_double), intent(out) :: x_next(n)
    type(model_context), pointer :: m
    call c_f_pointer(user, m)
    m%calls = m%calls + 1
    call advect(m, x, x_next, .false.)
    toy_step = 0
    if (m%fail) toy_step = 1
  end function toy_step

  !> dx_next = M'(x) dx = A dx (the state x only has to be finite)
  integer(c_int32_t) function toy_step_tl(user, n, x, dx, dx_next) bind(C)
    type(c_ptr), value :: user
    integer(c_size_t), value :: n
    real(c_double), intent(in) :: x(n), dx(n)
    real(c_double), intent(out) :: dx_next(n)
    type(model_context), pointer :: m
    call c_f_pointer(user, m)
    m%calls = m%calls + 1
    call advect(m, dx, dx_next, .false.)
    toy_step_tl = 0
    if (any(x /= x)) toy_step_tl = 2
  end function toy_step_tl

  !> dx = M'(x)^T dx_next = A^T dx_next
  integer(c_int32_t) function toy_step_ad(user, n, x, dx_next, dx) bind(C)
    type(c_ptr), value :: user
    integer(c_size_t), value :: n
    real(c_double), intent(in) :: x(n), dx_next(n)
    real(c_double), intent(out) :: dx(n)
    type(model_context), pointer :: m
    call c_f_pointer(user, m)
    m%calls = m%calls + 1
    call advect(m, dx_next, dx, .true.)
    toy_step_ad = 0
    if (any(x /= x)) toy_step_ad = 2
  end function toy_step_ad

end module toy_model

program lda_l4dvar_example
  use, intrinsic :: iso_c_binding, only: c_int32_t, c_double, c_loc
  use latentda
  use toy_model
  implicit none

  type(model_context), target :: model
  type(lda_context) :: ctx
  integer(c_int32_t) :: nlon, nlat, nlev
  real(c_double), allocatable :: lat(:), lon(:), lev(:), xb(:), xt(:, :), state(:)
  real(c_double), allocatable, target :: u(:,:,:), t(:,:,:), ps(:,:)
  integer(c_int32_t), allocatable :: var(:)
  real(c_double), allocatable :: olat(:), olon(:), olev(:), oval(:), osig(:), otime(:)
  real(c_double) :: step_dot, chained_dot, j0, j1, rb(3), ra(3)
  character(len=1024) :: bundle, input
  character(len=512) :: msg
  integer :: ierr, un, nx, nu, np, k, i, j, l, n, iu, it, ips
  logical :: ok

  if (command_argument_count() /= 2) then
    write(*, '(a)') 'usage: lda_l4dvar BUNDLE INPUT.bin'
    error stop 2
  end if
  call get_command_argument(1, bundle)
  call get_command_argument(2, input)
  ok = .true.

  ! ---- the twin experiment's data
  open(newunit=un, file=trim(input), access='stream', form='unformatted', status='old', action='read')
  read(un) nlon, nlat, nlev
  allocate(lat(nlat), lon(nlon), lev(nlev))
  read(un) lat, lon, lev
  np = nlon * nlat
  nu = np * nlev
  nx = 2 * nu + np
  allocate(xb(nx), xt(nx, 0:2), state(nx))
  read(un) xb, xt(:, 0)
  close(un)
  model%nlon = nlon
  call advect(model, xt(:, 0), xt(:, 1), .false.)
  call advect(model, xt(:, 1), xt(:, 2), .false.)
  allocate(u(nlon, nlat, nlev), t(nlon, nlat, nlev), ps(nlon, nlat))
  call scatter(xb)

  ! ---- latentda: open, bind, the host's model
  call lda_open(ctx, trim(bundle), ierr)
  call check('lda_open')
  call lda_bind_field(ctx, 'u', u, ierr)
  call check('lda_bind_field u')
  call lda_bind_field(ctx, 't', t, ierr)
  call check('lda_bind_field t')
  call lda_bind_field(ctx, 'ps', ps, ierr)
  call check('lda_bind_field ps')
  call lda_set_step_model(ctx, toy_step, toy_step_tl, toy_step_ad, 6.0d0, ierr, user=c_loc(model))
  call check('lda_set_step_model')

  ! ---- 1. adjoint tests
  call lda_l4dvar_check(ctx, 3, step_dot, chained_dot, ierr)
  call check('lda_l4dvar_check')
  write(*, '(a, es10.3, a, es10.3)') 'adjoint test: host step ', step_dot, ', chained 4D transform ', chained_dot
  call verdict('adjoint tests', step_dot < 1d-12 .and. chained_dot < 1d-5)

  ! ---- 2. observations at 0, 6 and 12 h (grid points, every other row, every third column, all levels)
  iu = lda_var_index(ctx, 'u')
  it = lda_var_index(ctx, 't')
  ips = lda_var_index(ctx, 'ps')
  n = 0
  do k = 0, 2
    do j = 1, nlat, 2
      do i = 1, nlon, 3
        n = n + 2 * nlev + 1
      end do
    end do
  end do
  allocate(var(n), olat(n), olon(n), olev(n), oval(n), osig(n), otime(n))
  n = 0
  do k = 0, 2
    do j = 1, nlat, 2
      do i = 1, nlon, 3
        do l = 1, nlev
          call add(iu, lev(l), xt(i + (j - 1) * nlon + (l - 1) * np, k), 1.0d0)
          call add(it, lev(l), xt(nu + i + (j - 1) * nlon + (l - 1) * np, k), 0.5d0)
        end do
        call add(ips, 1.0d0, xt(2 * nu + i + (j - 1) * nlon, k), 50.0d0)
      end do
    end do
  end do
  call lda_set_obs(ctx, var, olat, olon, olev, oval, osig, ierr)
  call check('lda_set_obs')
  call lda_set_obs_times(ctx, otime, ierr)
  call check('lda_set_obs_times')
  model%calls = 0
  call lda_analyse(ctx, ierr, method='l4dvar')
  call check('lda_analyse l4dvar')
  call lda_report_number(ctx, 'solver.j_initial', j0, ierr)
  call lda_report_number(ctx, 'solver.j_final', j1, ierr)
  call gather(state)
  call rms3(xb - xt(:, 0), rb)
  call rms3(state - xt(:, 0), ra)
  write(*, '(a, i0, a, i0, a)') 'l4dvar: ', n, ' observations in 3 slots, ', model%calls, ' callback calls'
  write(*, '(a, es11.4, a, es11.4)') 'J ', j0, ' -> ', j1
  write(*, '(a, 3es11.4)') 'rmse background (u t ps)', rb
  write(*, '(a, 3es11.4)') 'rmse analysis   (u t ps)', ra
  call verdict('analysis closer to the truth', model%calls > 0 .and. j1 < j0 .and. all(ra < rb))

  ! ---- 3. a failing host model: an error, and the fields stay as they are
  model%fail = .true.
  call lda_analyse(ctx, ierr, method='l4dvar')
  call lda_last_error(ctx, msg)
  write(*, '(a, i0, 2a)') 'failing step callback: ierr = ', ierr, ', ', trim(msg)
  call gather(xb)
  call verdict('failure reported, fields unchanged', ierr == LDA_ERR_BACKEND .and. all(xb == state))
  call lda_close(ctx)
  if (.not. ok) error stop 1

contains

  subroutine add(iv, level, value, sigma)
    integer, intent(in) :: iv
    real(c_double), intent(in) :: level, value, sigma
    n = n + 1
    var(n) = int(iv, c_int32_t)
    olat(n) = lat(j)
    olon(n) = lon(i)
    olev(n) = level
    oval(n) = value
    osig(n) = sigma
    otime(n) = 6.0d0 * k
  end subroutine add

  subroutine scatter(x)
    real(c_double), intent(in) :: x(:)
    u = reshape(x(1:nu), shape(u))
    t = reshape(x(nu + 1:2 * nu), shape(t))
    ps = reshape(x(2 * nu + 1:), shape(ps))
  end subroutine scatter

  subroutine gather(x)
    real(c_double), intent(out) :: x(:)
    x(1:nu) = reshape(u, [nu])
    x(nu + 1:2 * nu) = reshape(t, [nu])
    x(2 * nu + 1:) = reshape(ps, [np])
  end subroutine gather

  subroutine rms3(d, r)
    real(c_double), intent(in) :: d(:)
    real(c_double), intent(out) :: r(3)
    r(1) = sqrt(sum(d(1:nu)**2) / nu)
    r(2) = sqrt(sum(d(nu + 1:2 * nu)**2) / nu)
    r(3) = sqrt(sum(d(2 * nu + 1:)**2) / np)
  end subroutine rms3

  subroutine check(what)
    character(len=*), intent(in) :: what
    if (ierr /= LDA_OK) then
      call lda_last_error(ctx, msg)
      write(*, '(3a, i0, 2a)') 'FAIL ', what, ': ierr = ', ierr, ': ', trim(msg)
      error stop 1
    end if
  end subroutine check

  subroutine verdict(what, pass)
    character(len=*), intent(in) :: what
    logical, intent(in) :: pass
    write(*, '(a, a, a)') merge('PASS ', 'FAIL ', pass), what, ''
    ok = ok .and. pass
  end subroutine verdict

end program lda_l4dvar_example
