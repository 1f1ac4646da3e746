!> Error paths of the latentda Fortran module (run by tests/coupling.rs).
!>
!> Every failing call must return its documented status in ierr, leave a message containing the expected text
!> (lda_last_error), and leave the host arrays bit-identical. Usage: errors_f BUNDLE (a fixture bundle: u, t on 3
!> levels, ps; 8 x 16 grid). Prints "ok <case>" or "FAIL <case>: ..." per check; stops with code 1 on any failure.

!> Step-model callbacks (identity model) whose first step call re-enters its own context through a copy of the
!> handle (issue 25, item 4): lda_analyse and lda_close there must return LDA_ERR_NOT_READY and leave it open.
module errors_f_reentry
  use, intrinsic :: iso_c_binding, only: c_ptr, c_size_t, c_double, c_int32_t, c_associated
  use latentda
  implicit none
  type(lda_context), save :: cb_ctx                 ! a copy of the program's handle
  integer, save :: cb_calls = 0, cb_analyse = -1, cb_close = -1
  logical, save :: cb_still_open = .false.
  character(len=512), save :: cb_msg = ''
contains
  integer(c_int32_t) function cb_step(user, n, x, x_next) bind(C)
    type(c_ptr), value :: user
    integer(c_size_t), value :: n
    real(c_double), intent(in) :: x(n)
    real(c_double), intent(out) :: x_next(n)
    integer :: ierr
    x_next = x
    cb_calls = cb_calls + 1
    if (cb_calls == 1) then
      call lda_analyse(cb_ctx, ierr)
      cb_analyse = ierr
      call lda_last_error(cb_ctx, cb_msg)
      call lda_close(cb_ctx, ierr)
      cb_close = ierr
      cb_still_open = .not. cb_ctx%is_null()
    end if
    cb_step = 0
    if (c_associated(user)) cb_step = 1
  end function cb_step

  integer(c_int32_t) function cb_tl(user, n, x, dx, dx_next) bind(C)
    type(c_ptr), value :: user
    integer(c_size_t), value :: n
    real(c_double), intent(in) :: x(n), dx(n)
    real(c_double), intent(out) :: dx_next(n)
    dx_next = dx
    cb_tl = 0
    if (c_associated(user) .or. any(x /= x)) cb_tl = 1
  end function cb_tl

  integer(c_int32_t) function cb_ad(user, n, x, dx_next, dx) bind(C)
    type(c_ptr), value :: user
    integer(c_size_t), value :: n
    real(c_double), intent(in) :: x(n), dx_next(n)
    real(c_double), intent(out) :: dx(n)
    dx = dx_next
    cb_ad = 0
    if (c_associated(user) .or. any(x /= x)) cb_ad = 1
  end function cb_ad
end module errors_f_reentry

program errors_f
  use, intrinsic :: iso_c_binding, only: c_int32_t, c_int64_t, c_float, c_double, c_size_t
  use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan
  use latentda
  use errors_f_reentry
  implicit none

  integer, parameter :: nlon = 16, nlat = 8, nlev = 3, nobs = 3
  real(c_double), allocatable, target :: u(:,:,:), t(:,:,:), ps(:,:), u0(:,:,:), t0(:,:,:), ps0(:,:)
  real(c_double), allocatable, target :: ubad(:,:,:), u2d(:,:)
  real(c_float), allocatable, target :: u4(:,:,:), t4(:,:,:), ps4(:,:)
  integer(c_int32_t) :: var(nobs), flags(nobs)
  real(c_double) :: lat(nobs), lon(nobs), level(nobs), value(nobs), sigma(nobs), x
  type(lda_context) :: ctx, bad
  character(len=1024) :: bundle
  character(len=:), allocatable :: json
  integer :: ierr, failures, i, j, k
  integer(c_int32_t) :: id

  failures = 0
  if (command_argument_count() /= 1) then
    write(*, '(a)') 'usage: errors_f BUNDLE'
    error stop 2
  end if
  call get_command_argument(1, bundle)

  allocate(u(nlon, nlat, nlev), t(nlon, nlat, nlev), ps(nlon, nlat))
  do k = 1, nlev
    do j = 1, nlat
      do i = 1, nlon
        u(i, j, k) = 5.0d0 + 3.0d0 * sin(0.4d0 * (i - 1)) * cos(0.3d0 * (j - 1)) - (k - 1)
        t(i, j, k) = 245.0d0 + 5.0d0 * (k - 1) + 2.0d0 * cos(0.4d0 * (i - 1) + 0.2d0 * (j - 1))
      end do
    end do
  end do
  do j = 1, nlat
    do i = 1, nlon
      ps(i, j) = 100000.0d0 + 300.0d0 * sin(0.4d0 * (i - 1) - 0.5d0 * (j - 1))
    end do
  end do
  lat = [30.0d0, -20.0d0, 10.0d0]
  lon = [100.0d0, 200.0d0, 50.0d0]
  level = [0.5d0, 0.85d0, 0.0d0]
  value = [7.0d0, 257.0d0, 100100.0d0]
  sigma = [1.0d0, 0.5d0, 50.0d0]
  call snapshot()

  ! --- bad bundle path: ctx stays null, message from lda_last_error
  call lda_open(bad, '/nonexistent/latentda-bundle', ierr)
  call expect('open bad bundle path', bad, LDA_ERR_BUNDLE, 'does not exist')
  if (.not. bad%is_null()) call failed('open bad bundle path: context not null')
  call lda_open(bad, trim(bundle), ierr, options='threads = 0')
  call expect('open bad options', bad, LDA_ERR_INVALID_ARGUMENT, 'threads')
  ! --- calls on a context that is not open
  call lda_analyse(bad, ierr)
  call expect('analyse on null context', bad, LDA_ERR_NULL_POINTER, 'context is NULL')
  call lda_close(bad)

  ! --- open with options (two lines joined by new_line)
  call lda_open(ctx, trim(bundle), ierr, options='threads = 1' // new_line('a') // 'output = "analysis"')
  call expect('open', ctx, LDA_OK, '')
  call lda_open(ctx, trim(bundle), ierr)
  call expect('open twice', ctx, LDA_ERR_INVALID_ARGUMENT, 'already open')

  ! --- variable identifiers
  var(1) = lda_var_index(ctx, 'u', ierr)
  call expect('var_index u', ctx, LDA_OK, '')
  var(2) = lda_var_index(ctx, 't')
  var(3) = lda_var_index(ctx, 'ps')
  id = lda_var_index(ctx, 'w', ierr)
  call expect('var_index unknown', ctx, LDA_ERR_INVALID_ARGUMENT, "'w' is not in the bundle")
  if (id /= -1) call failed('var_index unknown: id is not -1')

  ! --- wrong shape / rank at bind
  allocate(ubad(nlon + 1, nlat, nlev), u2d(nlon, nlat))
  call lda_bind_field(ctx, 'u', ubad, ierr)
  call expect('bind wrong shape', ctx, LDA_ERR_INVALID_ARGUMENT, 'does not match the bundle grid')
  call lda_bind_field(ctx, 'u', u2d, ierr)
  call expect('bind rank 2 to an upper-air field', ctx, LDA_ERR_INVALID_ARGUMENT, 'needs ndim = 3')
  call lda_bind_field(ctx, 'w', u, ierr)
  call expect('bind unknown variable', ctx, LDA_ERR_INVALID_ARGUMENT, "'w' is not in the bundle")
  call expect_unchanged('after bind errors')

  ! --- observation arrays: mismatched and zero length
  call lda_set_obs(ctx, var, lat(1:2), lon, level, value, sigma, ierr)
  call expect('set_obs mismatched lat', ctx, LDA_ERR_INVALID_ARGUMENT, "'lat' has 2 values but 'var' has 3")
  call lda_set_obs(ctx, var, lat, lon, level, value, sigma(1:1), ierr)
  call expect('set_obs mismatched sigma', ctx, LDA_ERR_INVALID_ARGUMENT, "'sigma' has 1 values but 'var' has 3")
  call lda_set_obs(ctx, var(1:0), lat(1:0), lon(1:0), level(1:0), value(1:0), sigma(1:0), ierr)
  call expect('set_obs zero length', ctx, LDA_ERR_INVALID_ARGUMENT, 'n = 0')
  call lda_analyse(ctx, ierr)
  call expect('analyse without observations', ctx, LDA_ERR_NOT_READY, 'no observations')

  ! --- field not bound
  call lda_set_obs(ctx, var, lat, lon, level, value, sigma, ierr)
  call expect('set_obs', ctx, LDA_OK, '')
  call lda_bind_field(ctx, 'u', u, ierr)
  call expect('bind u', ctx, LDA_OK, '')
  call lda_bind_field(ctx, 't', t, ierr)
  call expect('bind t', ctx, LDA_OK, '')
  call lda_analyse(ctx, ierr)
  call expect('analyse with ps not bound', ctx, LDA_ERR_NOT_READY, "field 'ps' is not bound")
  call expect_unchanged('after analyse with a field not bound')
  call lda_obs_qc(ctx, flags, ierr)
  call expect('obs_qc before analysis', ctx, LDA_ERR_NOT_READY, 'no analysis')

  ! --- NaN in a bound field (Fortran t(6, 1, 2) is C t[1][0][5])
  call lda_bind_field(ctx, 'ps', ps, ierr)
  call expect('bind ps', ctx, LDA_OK, '')
  t(6, 1, 2) = ieee_value(x, ieee_quiet_nan)
  call snapshot()
  call lda_analyse(ctx, ierr)
  call expect('analyse NaN in t', ctx, LDA_ERR_INVALID_DATA, &
       "non-finite value NaN in variable 't' at (lev index 1, lat index 0, lon index 5)")
  call expect_unchanged('after NaN in a field')
  t(6, 1, 2) = 250.0d0

  ! --- unknown method
  call snapshot()
  call lda_analyse(ctx, ierr, method='4dvar')
  call expect('analyse unknown method', ctx, LDA_ERR_INVALID_ARGUMENT, "method '4dvar'")
  call expect_unchanged('after unknown method')

  ! --- success, then errors on the results
  call snapshot()
  call lda_analyse(ctx, ierr, method='l3dvar')
  call expect('analyse', ctx, LDA_OK, '')
  if (all(u == u0) .or. all(t == t0) .or. all(ps == ps0)) call failed('analyse: a bound array was not updated')
  flags = -7
  call lda_obs_qc(ctx, flags(1:2), ierr)
  call expect('obs_qc wrong size', ctx, LDA_ERR_INVALID_ARGUMENT, 'n = 2')
  if (any(flags /= -7)) call failed('obs_qc wrong size wrote flags')
  call lda_obs_qc(ctx, flags, ierr)
  call expect('obs_qc', ctx, LDA_OK, '')
  if (any(flags /= LDA_QC_USED)) call failed('obs_qc: not all used')
  call lda_report_json(ctx, json, ierr)
  call expect('report_json', ctx, LDA_OK, '')
  if (index(json, '"n_used": 3') == 0 .and. index(json, '"n_used":3') == 0) call failed('report_json: no n_used 3')
  x = -1
  call lda_report_number(ctx, 'variables.zz.omb_rms', x, ierr)
  call expect('report_number missing', ctx, LDA_ERR_INVALID_ARGUMENT, "no entry 'zz'")
  if (x /= -1) call failed('report_number missing wrote the value')
  call lda_report_number(ctx, 'n_used', x, ierr)
  call expect('report_number', ctx, LDA_OK, '')
  if (x /= 3) call failed('report_number n_used /= 3')

  ! --- a failing analysis after a successful one leaves the analysed arrays alone
  u(1, 1, 1) = ieee_value(x, ieee_quiet_nan)
  call snapshot()
  call lda_analyse(ctx, ierr)
  call expect('analyse NaN after success', ctx, LDA_ERR_INVALID_DATA, "variable 'u'")
  call expect_unchanged('after NaN following a success')
  u(1, 1, 1) = 5.0d0

  ! --- single precision binding (generic lda_bind_field, real(c_float)) analyses too
  allocate(u4(nlon, nlat, nlev), t4(nlon, nlat, nlev), ps4(nlon, nlat))
  u4 = real(u0, c_float)
  u4(1, 1, 1) = 5.0
  t4 = real(t0, c_float)
  ps4 = real(ps0, c_float)
  call lda_bind_field(ctx, 'u', u4, ierr)
  call expect('bind u f32', ctx, LDA_OK, '')
  call lda_bind_field(ctx, 't', t4, ierr)
  call expect('bind t f32', ctx, LDA_OK, '')
  call lda_bind_field(ctx, 'ps', ps4, ierr)
  call expect('bind ps f32', ctx, LDA_OK, '')
  call lda_analyse(ctx, ierr)
  call expect('analyse f32', ctx, LDA_OK, '')

  ! --- B operator wrappers
  if (lda_control_size(ctx, ierr) <= 0) call failed('control_size')
  call expect('control_size', ctx, LDA_OK, '')
  if (lda_state_size(ctx) /= int(2 * nlon * nlat * nlev + nlon * nlat, c_size_t)) call failed('state_size')
  block
    real(c_double), allocatable :: v(:), xs(:), w(:)
    allocate(v(lda_control_size(ctx)), xs(lda_state_size(ctx)), w(lda_control_size(ctx)))
    v = 1
    call lda_bsqrt(ctx, v, xs, ierr)
    call expect('bsqrt', ctx, LDA_OK, '')
    call lda_bsqrt_ad(ctx, xs, w, ierr)
    call expect('bsqrt_ad', ctx, LDA_OK, '')
    call lda_bsqrt(ctx, v(1:1), xs, ierr)
    call expect('bsqrt wrong size', ctx, LDA_ERR_INVALID_ARGUMENT, 'control vector v')
  end block

  ! --- re-entry from a step-model callback (issue 25, item 4): refused at once, the outer call completes
  block
    real(c_double) :: step_dot, chained_dot
    cb_ctx = ctx
    call lda_set_step_model(ctx, cb_step, cb_tl, cb_ad, 6.0d0, ierr)
    call expect('set_step_model', ctx, LDA_OK, '')
    call lda_l4dvar_check(ctx, 2, step_dot, chained_dot, ierr)
    call expect('l4dvar_check whose callback re-enters', ctx, LDA_OK, '')
    if (cb_calls < 1) call failed('re-entry: the step callback never ran')
    ierr = cb_analyse
    if (ierr /= LDA_ERR_NOT_READY .or. index(cb_msg, 're-entrant call') == 0) then
      write(*, '(a, i0, 2a)') 'FAIL analyse from inside a callback: ierr ', ierr, ' message ', trim(cb_msg)
      failures = failures + 1
    else
      write(*, '(2a)') 'ok analyse from inside a callback: ', trim(cb_msg)
    end if
    if (cb_close /= LDA_ERR_NOT_READY .or. .not. cb_still_open) then
      write(*, '(a, i0)') 'FAIL close from inside a callback must be refused and keep the handle: ierr ', cb_close
      failures = failures + 1
    else
      write(*, '(a)') 'ok close from inside a callback: refused, handle kept'
    end if
    call lda_clear_step_model(ctx, ierr)
    call expect('clear_step_model', ctx, LDA_OK, '')
    ! the nonlinear model alone (the online mix's forecasts): l4dvar's checks name the missing TL
    call lda_set_forecast_model(ctx, cb_step, 6.0d0, ierr)
    call expect('set_forecast_model', ctx, LDA_OK, '')
    call lda_l4dvar_check(ctx, 2, step_dot, chained_dot, ierr)
    call expect('l4dvar_check with a nonlinear-only model', ctx, LDA_ERR_INVALID_ARGUMENT, "'step' alone")
    call lda_clear_step_model(ctx, ierr)
    call expect('clear_step_model', ctx, LDA_OK, '')
    ! analysis times (the online mix's check of when its forecasts are valid): a finite one is kept, NaN refused
    call lda_set_analysis_time(ctx, 6.0d0, ierr)
    call expect('set_analysis_time', ctx, LDA_OK, '')
    call lda_set_analysis_time(ctx, ieee_value(x, ieee_quiet_nan), ierr)
    call expect('set_analysis_time(NaN)', ctx, LDA_ERR_INVALID_ARGUMENT, 'not finite')
  end block

  call lda_close(ctx)
  if (.not. ctx%is_null()) call failed('close: context not null')
  call lda_close(ctx)   ! closing twice is harmless in Fortran
  ! A copy of the handle, closed through the original: refused (not an abort), and the copy is nulled.
  call lda_close(cb_ctx, ierr)
  call expect('close a copy of a closed handle', cb_ctx, LDA_ERR_INVALID_ARGUMENT, 'not a live context')
  if (.not. cb_ctx%is_null()) call failed('close of a closed copy: handle not nulled')
  write(*, '(a, i0, a)') 'version ', len(lda_version()), ' chars'
  if (failures > 0) then
    write(*, '(a, i0, a)') 'FAILED: ', failures, ' failure(s)'
    error stop 1
  end if
  write(*, '(a)') 'PASSED: 0 failure(s)'

contains

  subroutine failed(what)
    character(len=*), intent(in) :: what
    write(*, '(2a)') 'FAIL ', what
    failures = failures + 1
  end subroutine failed

  subroutine expect(name, c, want, needle)
    character(len=*), intent(in) :: name, needle
    type(lda_context), intent(in) :: c
    integer, intent(in) :: want
    character(len=512) :: msg
    call lda_last_error(c, msg)
    if (ierr /= want) then
      write(*, '(3a, i0, a, i0, 3a)') 'FAIL ', name, ': ierr ', ierr, ', expected ', want, ' (', trim(msg), ')'
      failures = failures + 1
    else if (want /= LDA_OK .and. index(msg, needle) == 0) then
      write(*, '(6a)') 'FAIL ', name, ': message "', trim(msg), '" does not contain ', needle
      failures = failures + 1
    else
      if (want == LDA_OK) msg = ''
      write(*, '(3a, i0, 1x, a)') 'ok ', name, ': ', ierr, trim(msg)
    end if
  end subroutine expect

  subroutine snapshot()
    u0 = u
    t0 = t
    ps0 = ps
  end subroutine snapshot

  !> Bit-identical comparison (NaN-safe) through transfer to 64-bit integers.
  subroutine expect_unchanged(name)
    character(len=*), intent(in) :: name
    if (any(transfer(u, 0_c_int64_t, size(u)) /= transfer(u0, 0_c_int64_t, size(u0))) .or. &
        any(transfer(t, 0_c_int64_t, size(t)) /= transfer(t0, 0_c_int64_t, size(t0))) .or. &
        any(transfer(ps, 0_c_int64_t, size(ps)) /= transfer(ps0, 0_c_int64_t, size(ps0)))) then
      call failed(name // ': host arrays changed by a failing call')
    else
      write(*, '(3a)') 'ok ', name, ': host arrays bit-identical'
    end if
  end subroutine expect_unchanged

end program errors_f
