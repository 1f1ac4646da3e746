!> Issue 26 from Fortran: layout queries (default integers), H as a service and the noise floor of U on the fixture
!> bundle tests/fixtures/tanh; the Fortran twin of tests/coupling/obs_service.c.
!>   obs_service_f BUNDLE BACKGROUND.bin
!> Prints PASS/FAIL lines and PASSED at the end when all passed.
program obs_service_f
  use, intrinsic :: iso_c_binding, only: c_double, c_int32_t, c_size_t
  use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan, ieee_is_nan
  use latentda
  implicit none
  integer, parameter :: nobs = 6
  type(lda_context) :: ctx
  character(len=1024) :: bundle, bgfile
  character(len=512) :: msg
  character(len=32) :: name
  real(c_double), allocatable, target :: xb(:)
  real(c_double), allocatable :: lat(:), lon(:), lev(:), hty(:)
  real(c_double), pointer, contiguous :: f2(:,:), f3(:,:,:)
  real(c_double) :: olat(nobs), olon(nobs), olev(nobs), value(nobs), sigma(nobs), hx(nobs), hx2(nobs), y(nobs)
  real(c_double) :: omb, lhs, rhs, un, utn, adj
  integer(c_int32_t) :: var(nobs), qc(nobs), qc_an(nobs), want(nobs)
  integer :: ierr, i, kind, vert, nlat, nlon, nlev, nvar, nx, vlev, off, length, covered, u, failures
  failures = 0
  call get_command_argument(1, bundle)
  call get_command_argument(2, bgfile)
  call lda_open(ctx, trim(bundle), ierr)
  call check('lda_open')
  call lda_grid_info(ctx, kind, nlat, nlon, vert, nlev, ierr)
  call check('lda_grid_info')
  call expect(kind == LDA_GRID_GAUSSIAN .and. vert == LDA_VERTICAL_SIGMA .and. nlat == 8 .and. nlon == 16 .and. nlev == 3, &
       'grid info of the fixture')
  allocate(lat(nlat), lon(nlon), lev(nlev))
  call lda_grid_coords(ctx, lat, lon, lev, ierr)
  call check('lda_grid_coords')
  nx = lda_state_dim(ctx, ierr)
  call check('lda_state_dim')
  call expect(lda_control_dim(ctx) == int(lda_control_size(ctx)) .and. nx == int(lda_state_size(ctx)), &
       'default-integer sizes equal the c_size_t ones')
  allocate(xb(nx), hty(nx))
  open(newunit=u, file=trim(bgfile), access='stream', form='unformatted', status='old', action='read')
  read(u) xb
  close(u)
  call lda_var_count(ctx, nvar, ierr)
  call check('lda_var_count')
  covered = 0
  do i = 0, nvar - 1
    call lda_var_name(ctx, i, name, ierr)
    call check('lda_var_name')
    call lda_var_layout(ctx, i, vlev, off, length, ierr)
    call check('lda_var_layout')
    write(*, '(a, i0, 3a, i0, a, i0, a, i0, a)') 'variable ', i, ' ', trim(name), ': ', vlev, ' levels, x(', off + 1, &
         ':', off + length, ')'
    call expect(off == covered .and. length == max(vlev, 1) * nlat * nlon, 'blocks follow each other')
    covered = covered + length
    if (vlev == 0) then
      f2(1:nlon, 1:nlat) => xb(off + 1:off + length)
      call lda_bind_field(ctx, trim(name), f2, ierr)
    else
      f3(1:nlon, 1:nlat, 1:vlev) => xb(off + 1:off + length)
      call lda_bind_field(ctx, trim(name), f3, ierr)
    end if
    call check('lda_bind_field')
  end do
  call expect(covered == nx, "the variables' blocks fill the state")
  call lda_var_layout(ctx, nvar, vlev, off, length, ierr)
  call expect(ierr == LDA_ERR_INVALID_ARGUMENT, 'identifier out of range refused')

  var = [lda_var_index(ctx, 'u'), lda_var_index(ctx, 't'), lda_var_index(ctx, 'ps'), lda_var_index(ctx, 'u'), -1_c_int32_t, &
       lda_var_index(ctx, 't')]
  olat = [-81.0_c_double, lat(3), 12.5_c_double, 10.0_c_double, 0.0_c_double, 5.0_c_double]
  olon = [359.1_c_double, lon(6), 101.0_c_double, 10.0_c_double, 0.0_c_double, 5.0_c_double]
  olev = [0.61_c_double, lev(2), ieee_value(1.0_c_double, ieee_quiet_nan), 0.95_c_double, 0.5_c_double, 0.5_c_double]
  value = 0
  sigma = [1.0_c_double, 1.0_c_double, 50.0_c_double, 1.0_c_double, 1.0_c_double, 0.0_c_double]
  want = [LDA_QC_USED, LDA_QC_USED, LDA_QC_USED, LDA_QC_OUTSIDE_VERTICAL, LDA_QC_UNKNOWN_VARIABLE, LDA_QC_INVALID]
  call lda_set_obs(ctx, var, olat, olon, olev, value, sigma, ierr)
  call check('lda_set_obs')
  call lda_obs_h(ctx, hx, ierr, qc=qc)
  call check('lda_obs_h')
  call expect(all(qc == want), 'geometric QC flags')
  call expect(all(ieee_is_nan(hx(4:6))) .and. .not. ieee_is_nan(hx(1)), 'rejected observations get NaN')
  value(1:3) = hx(1:3) + 0.7_c_double * sigma(1:3)
  call lda_set_obs(ctx, var, olat, olon, olev, value, sigma, ierr)
  call check('lda_set_obs (values)')
  call lda_obs_h(ctx, hx2, ierr, x=xb)
  call check('lda_obs_h (x given)')
  call expect(all(hx2(1:3) == hx(1:3)), 'same positions, same H x (bound fields or x given)')
  y = [0.3_c_double, -1.7_c_double, 2.2_c_double, 0.0_c_double, 0.0_c_double, 0.0_c_double]
  call lda_obs_h_ad(ctx, y, hty, ierr)
  call check('lda_obs_h_ad')
  lhs = dot_product(hx2(1:3), y(1:3))
  rhs = dot_product(xb, hty)
  call expect(abs(lhs - rhs) <= 1.0e-12_c_double * abs(lhs), 'lda_obs_h_ad is the transpose of lda_obs_h')
  call lda_bsqrt_noise(ctx, un, utn, adj, ierr)
  call check('lda_bsqrt_noise')
  write(*, '(a, 3es10.2)') 'noise floor of U, U^T, adjoint:', un, utn, adj
  call expect(un > 0 .and. un < 1.0e-4_c_double .and. utn > 0 .and. utn < 1.0e-4_c_double .and. adj < 1.0e-4_c_double, &
       'float32 noise floor in range')
  call lda_analyse(ctx, ierr, method='l3dvar')      ! overwrites xb with the analysis
  call check('lda_analyse')
  call lda_obs_qc(ctx, qc_an, ierr)
  call check('lda_obs_qc')
  call expect(all(qc_an == want), 'the analysis flags the same observations')
  do i = 1, 3
    name = merge('u ', 't ', i == 1)
    if (i == 3) name = 'ps'
    call lda_report_number(ctx, 'variables.' // trim(name) // '.omb_mean', omb, ierr)
    call check('lda_report_number')
    write(*, '(2a, 2es25.17)') trim(name), ': value - H x_b, report O-B:', value(i) - hx2(i), omb
    call expect(omb == value(i) - hx2(i), "H x_b of the service equals the analysis's bit for bit")
  end do
  call lda_close(ctx)
  if (failures == 0) then
    write(*, '(a)') 'PASSED'
  else
    write(*, '(a)') 'FAILED'
    error stop 1
  end if

contains

  subroutine expect(ok, what)
    logical, intent(in) :: ok
    character(len=*), intent(in) :: what
    if (ok) then
      write(*, '(2a)') 'PASS ', what
    else
      write(*, '(2a)') 'FAIL ', what
      failures = failures + 1
    end if
  end subroutine expect

  subroutine check(what)
    character(len=*), intent(in) :: what
    if (ierr == LDA_OK) return
    call lda_last_error(ctx, msg)
    write(*, '(a, i0, 4a)') 'FAIL latentda error ', ierr, ' in ', what, ': ', trim(msg)
    error stop 1
  end subroutine check

end program obs_service_f
