!> latentda: latent data assimilation for Fortran forecast models, through the C ABI (include/latentda.h).
!>
!> Call order (see docs/coupling.md):
!>
!>     use latentda
!>     type(lda_context) :: ctx
!>     call lda_open(ctx, bundle_dir, ierr [, options])     ! once
!>     call lda_bind_field(ctx, 'u', u, ierr)               ! every bundle variable, once (arrays stay in place)
!>     iv = lda_var_index(ctx, 't')                         ! identifiers for lda_set_obs
!>     call lda_set_obs(ctx, var, lat, lon, level, value, sigma, ierr)   ! each cycle
!>     call lda_set_obs_times(ctx, time_hours, ierr)         ! optional, for method 'l4dvar'
!>     call lda_set_withheld(ctx, var, lat, lon, level, value, sigma, ierr)  ! optional: verified, not assimilated
!>     call lda_analyse(ctx, ierr [, method])               ! each cycle: the analysis overwrites u, t, ...
!>     call lda_obs_qc(ctx, flags, ierr)                    ! optional diagnostics
!>     call lda_close(ctx)                                  ! required: releases the context
!>
!> A host with its own minimiser (docs/b-operator.md) also uses the layout queries (lda_grid_info, lda_grid_coords,
!> lda_var_count, lda_var_name, lda_var_layout), the B operator (lda_bsqrt, lda_bsqrt_ad, sizes as default integers
!> from lda_control_dim, lda_state_dim), latentda's observation operator (lda_obs_h, lda_obs_h_ad) and the float32
!> noise floor of U (lda_bsqrt_noise); examples/fortran/host_minimiser.f90 shows them together.
!>
!> Every routine returns its status in `ierr` (the last required argument; options are optional arguments after
!> it): LDA_OK (0) on success, otherwise one of the LDA_ERR_* codes below, with a message from lda_last_error.
!> A failing call changes nothing, and bound arrays are overwritten only by a successful analysis.
!>
!> Arrays: fields are real(c_float) or real(c_double), shape (nlon, nlat) for surface variables and
!> (nlon, nlat, nlev) for upper-air variables, latitudes north to south, levels top to bottom. A bound array is
!> used in place: it must be contiguous, have the TARGET (or POINTER) attribute, and stay allocated (not moved,
!> reallocated or deallocated) until it is bound again or the context is closed. Never bind an array section or
!> expression: the compiler would pass a temporary copy and latentda would keep a dangling pointer.
!>
!> Threads: one thread at a time per context; different contexts may be used concurrently.
module latentda
  use, intrinsic :: iso_c_binding, only: c_ptr, c_null_ptr, c_null_char, c_char, c_int32_t, c_int64_t, &
       c_size_t, c_float, c_double, c_loc, c_associated, c_f_pointer, c_funptr, c_funloc, c_null_funptr
  implicit none
  private

  public :: lda_context
  public :: lda_open, lda_close, lda_bind_field, lda_var_index, lda_set_obs, lda_analyse, lda_obs_qc
  public :: lda_last_error, lda_report_json, lda_report_number, lda_version
  public :: lda_control_size, lda_state_size, lda_b_linearise, lda_bsqrt, lda_bsqrt_ad
  public :: lda_bvariance, lda_brandomize
  public :: lda_control_dim, lda_state_dim, lda_bsqrt_noise
  public :: lda_grid_info, lda_grid_coords, lda_var_count, lda_var_name, lda_var_layout
  public :: lda_obs_h, lda_obs_h_ad
  public :: lda_set_withheld, lda_set_obs_times, lda_set_step_model, lda_clear_step_model, lda_l4dvar_check
  public :: lda_set_forecast_model, lda_set_analysis_time
  public :: lda_set_ensemble
  public :: lda_step_fn, lda_step_tl_fn, lda_step_ad_fn

  ! Status codes (identical to enum LdaStatus in include/latentda.h; a test checks they match).
  integer, parameter, public :: LDA_OK = 0                    !< success
  integer, parameter, public :: LDA_ERR_NULL_POINTER = 1      !< a required argument or the context was null
  integer, parameter, public :: LDA_ERR_INVALID_ARGUMENT = 2  !< bad name, shape, length, method, options or context
  integer, parameter, public :: LDA_ERR_BUNDLE = 3            !< bundle missing, malformed or failing validation
  integer, parameter, public :: LDA_ERR_BACKEND = 4           !< execution backend or device unusable
  integer, parameter, public :: LDA_ERR_IO = 5                !< file input/output failed
  integer, parameter, public :: LDA_ERR_INVALID_DATA = 6      !< NaN/Inf in a bound field or control vector (not obs)
  integer, parameter, public :: LDA_ERR_NOT_READY = 7         !< not bound, no obs, no analysis, no baseline B, busy
  integer, parameter, public :: LDA_ERR_SOLVER = 8            !< the minimisation failed
  integer, parameter, public :: LDA_ERR_INTERNAL = 9          !< internal error (caught panic): context failed, close it
  integer, parameter, public :: LDA_ERR_BUFFER_TOO_SMALL = 10 !< output buffer too small

  ! Version of this module: Cargo.toml's version, as LATENTDA_VERSION_* in latentda.h (tests/install.rs checks both).
  ! lda_version() returns the linked library's version at run time.
  integer, parameter, public :: LATENTDA_VERSION_MAJOR = 0
  integer, parameter, public :: LATENTDA_VERSION_MINOR = 1
  integer, parameter, public :: LATENTDA_VERSION_PATCH = 0
  character(len=*), parameter, public :: LATENTDA_VERSION_STRING = '0.1.0'

  ! Quality-control flags returned by lda_obs_qc (enum LdaQcFlag in the header).
  integer(c_int32_t), parameter, public :: LDA_QC_USED = 0              !< used in the analysis
  integer(c_int32_t), parameter, public :: LDA_QC_INVALID = 1           !< non-finite value/position, sigma too small
  integer(c_int32_t), parameter, public :: LDA_QC_OUTSIDE_DOMAIN = 2    !< outside the grid (polar caps count inside)
  integer(c_int32_t), parameter, public :: LDA_QC_OUTSIDE_VERTICAL = 3  !< outside the vertical range
  integer(c_int32_t), parameter, public :: LDA_QC_UNKNOWN_VARIABLE = 4  !< not a bundle variable (e.g. id -1)
  integer(c_int32_t), parameter, public :: LDA_QC_BACKGROUND_CHECK = 5  !< failed the background check
  integer(c_int32_t), parameter, public :: LDA_QC_OUTSIDE_WINDOW = 6    !< l4dvar: time outside the window

  integer(c_int32_t), parameter :: ORDER_FORTRAN = 1  ! LDA_ORDER_FORTRAN

  ! Grid kind and vertical coordinate returned by lda_grid_info (enums LdaGridKind, LdaVertical in the header).
  integer, parameter, public :: LDA_GRID_REGULAR = 0        !< equally spaced latitudes
  integer, parameter, public :: LDA_GRID_GAUSSIAN = 1       !< Gaussian latitudes
  integer, parameter, public :: LDA_VERTICAL_SIGMA = 0      !< sigma = p / ps
  integer, parameter, public :: LDA_VERTICAL_PRESSURE = 1   !< pressure, Pa

  !> Handle of one latentda context (an opened bundle, bound arrays, observations, last results).
  !> Open with lda_open, release with lda_close (required: there is no automatic finalisation).
  type :: lda_context
    private
    type(c_ptr) :: ptr = c_null_ptr                  ! the C LdaContext*, null when not open
    character(len=:), allocatable :: local_error     ! message of a failure detected in this module
  contains
    procedure :: is_null => lda_context_is_null      !< .true. if the context is not open
  end type lda_context

  !> Binds a host field in place: real(c_float) or real(c_double), rank 2 (nlon, nlat) or rank 3
  !> (nlon, nlat, nlev). call lda_bind_field(ctx, name, field, ierr)
  interface lda_bind_field
    module procedure lda_bind_field_r4_2, lda_bind_field_r4_3, lda_bind_field_r8_2, lda_bind_field_r8_3
  end interface lda_bind_field

  !> A host step model for method 'l4dvar' (typedefs LdaStepFn, LdaStepTlFn, LdaStepAdFn of the header): one time
  !> step on physical states in state layout (variables in bundle order, each an (nlon, nlat[, nlev]) block in
  !> Fortran terms), n = lda_state_size. Write every output value and return 0 (any other value fails the
  !> analysis with LDA_ERR_BACKEND). user is the pointer given to lda_set_step_model. Implement them as bind(C)
  !> procedures. They may not use their own context: a call on it from inside them returns LDA_ERR_NOT_READY
  !> at once (lda_last_error works there); other contexts may be used.
  abstract interface
    !> x_next = M(x)
    integer(c_int32_t) function lda_step_fn(user, n, x, x_next) bind(C)
      import :: c_ptr, c_size_t, c_double, c_int32_t
      type(c_ptr), value :: user                     !< the host's context pointer
      integer(c_size_t), value :: n                  !< state size
      real(c_double), intent(in) :: x(n)             !< state at t
      real(c_double), intent(out) :: x_next(n)       !< state at t + time step
    end function lda_step_fn
    !> dx_next = M'(x) dx
    integer(c_int32_t) function lda_step_tl_fn(user, n, x, dx, dx_next) bind(C)
      import :: c_ptr, c_size_t, c_double, c_int32_t
      type(c_ptr), value :: user                     !< the host's context pointer
      integer(c_size_t), value :: n                  !< state size
      real(c_double), intent(in) :: x(n)             !< linearisation state at t
      real(c_double), intent(in) :: dx(n)            !< perturbation at t
      real(c_double), intent(out) :: dx_next(n)      !< perturbation at t + time step
    end function lda_step_tl_fn
    !> dx = M'(x)^T dx_next (the exact transpose of the TL)
    integer(c_int32_t) function lda_step_ad_fn(user, n, x, dx_next, dx) bind(C)
      import :: c_ptr, c_size_t, c_double, c_int32_t
      type(c_ptr), value :: user                     !< the host's context pointer
      integer(c_size_t), value :: n                  !< state size
      real(c_double), intent(in) :: x(n)             !< linearisation state at t
      real(c_double), intent(in) :: dx_next(n)       !< adjoint variable at t + time step
      real(c_double), intent(out) :: dx(n)           !< adjoint variable at t (overwritten, not accumulated)
    end function lda_step_ad_fn
  end interface

  ! Raw C interfaces, one per function of include/latentda.h (private).
  interface
    integer(c_int32_t) function c_lda_open(bundle_dir, options, out) bind(C, name="lda_open")
      import :: c_int32_t, c_char, c_ptr
      character(kind=c_char), intent(in) :: bundle_dir(*)
      type(c_ptr), value :: options
      type(c_ptr), intent(out) :: out
    end function c_lda_open

    integer(c_int32_t) function c_lda_close(ctx) bind(C, name="lda_close")
      import :: c_int32_t, c_ptr
      type(c_ptr), value :: ctx
    end function c_lda_close

    type(c_ptr) function c_lda_last_error(ctx) bind(C, name="lda_last_error")
      import :: c_ptr
      type(c_ptr), value :: ctx
    end function c_lda_last_error

    integer(c_int32_t) function c_lda_var_index(ctx, name, index_out) bind(C, name="lda_var_index")
      import :: c_int32_t, c_char, c_ptr
      type(c_ptr), value :: ctx
      character(kind=c_char), intent(in) :: name(*)
      integer(c_int32_t), intent(out) :: index_out
    end function c_lda_var_index

    integer(c_int32_t) function c_lda_bind_field_f32(ctx, name, data, ndim, shape, order) &
         bind(C, name="lda_bind_field_f32")
      import :: c_int32_t, c_int64_t, c_char, c_ptr
      type(c_ptr), value :: ctx
      character(kind=c_char), intent(in) :: name(*)
      type(c_ptr), value :: data
      integer(c_int32_t), value :: ndim
      integer(c_int64_t), intent(in) :: shape(*)
      integer(c_int32_t), value :: order
    end function c_lda_bind_field_f32

    integer(c_int32_t) function c_lda_bind_field_f64(ctx, name, data, ndim, shape, order) &
         bind(C, name="lda_bind_field_f64")
      import :: c_int32_t, c_int64_t, c_char, c_ptr
      type(c_ptr), value :: ctx
      character(kind=c_char), intent(in) :: name(*)
      type(c_ptr), value :: data
      integer(c_int32_t), value :: ndim
      integer(c_int64_t), intent(in) :: shape(*)
      integer(c_int32_t), value :: order
    end function c_lda_bind_field_f64

    integer(c_int32_t) function c_lda_set_obs(ctx, n, var, lat, lon, level, value, sigma) &
         bind(C, name="lda_set_obs")
      import :: c_int32_t, c_size_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      integer(c_size_t), value :: n
      integer(c_int32_t), intent(in) :: var(*)
      real(c_double), intent(in) :: lat(*), lon(*), level(*), value(*), sigma(*)
    end function c_lda_set_obs

    integer(c_int32_t) function c_lda_set_withheld(ctx, n, var, lat, lon, level, value, sigma) &
         bind(C, name="lda_set_withheld")
      import :: c_int32_t, c_size_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      integer(c_size_t), value :: n
      integer(c_int32_t), intent(in) :: var(*)
      real(c_double), intent(in) :: lat(*), lon(*), level(*), value(*), sigma(*)
    end function c_lda_set_withheld

    integer(c_int32_t) function c_lda_analyse(ctx, method) bind(C, name="lda_analyse")
      import :: c_int32_t, c_ptr
      type(c_ptr), value :: ctx, method      ! method may be c_null_ptr
    end function c_lda_analyse

    integer(c_int32_t) function c_lda_obs_qc(ctx, flags_out, n) bind(C, name="lda_obs_qc")
      import :: c_int32_t, c_size_t, c_ptr
      type(c_ptr), value :: ctx
      integer(c_int32_t), intent(out) :: flags_out(*)
      integer(c_size_t), value :: n
    end function c_lda_obs_qc

    integer(c_int32_t) function c_lda_report_json(ctx, buf, len, needed) bind(C, name="lda_report_json")
      import :: c_int32_t, c_size_t, c_ptr
      type(c_ptr), value :: ctx, buf        ! buf may be c_null_ptr (size query)
      integer(c_size_t), value :: len
      integer(c_size_t), intent(out) :: needed
    end function c_lda_report_json

    integer(c_int32_t) function c_lda_report_number(ctx, path, value_out) bind(C, name="lda_report_number")
      import :: c_int32_t, c_char, c_double, c_ptr
      type(c_ptr), value :: ctx
      character(kind=c_char), intent(in) :: path(*)
      real(c_double), intent(out) :: value_out
    end function c_lda_report_number

    integer(c_int32_t) function c_lda_control_size(ctx, n_out) bind(C, name="lda_control_size")
      import :: c_int32_t, c_size_t, c_ptr
      type(c_ptr), value :: ctx
      integer(c_size_t), intent(out) :: n_out
    end function c_lda_control_size

    integer(c_int32_t) function c_lda_state_size(ctx, n_out) bind(C, name="lda_state_size")
      import :: c_int32_t, c_size_t, c_ptr
      type(c_ptr), value :: ctx
      integer(c_size_t), intent(out) :: n_out
    end function c_lda_state_size

    integer(c_int32_t) function c_lda_b_linearise(ctx) bind(C, name="lda_b_linearise")
      import :: c_int32_t, c_ptr
      type(c_ptr), value :: ctx
    end function c_lda_b_linearise

    integer(c_int32_t) function c_lda_bsqrt(ctx, v, nv, x_out, nx) bind(C, name="lda_bsqrt")
      import :: c_int32_t, c_size_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      real(c_double), intent(in) :: v(*)
      integer(c_size_t), value :: nv
      real(c_double), intent(inout) :: x_out(*)
      integer(c_size_t), value :: nx
    end function c_lda_bsqrt

    integer(c_int32_t) function c_lda_bsqrt_ad(ctx, x, nx, v_out, nv) bind(C, name="lda_bsqrt_ad")
      import :: c_int32_t, c_size_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      real(c_double), intent(in) :: x(*)
      integer(c_size_t), value :: nx
      real(c_double), intent(inout) :: v_out(*)
      integer(c_size_t), value :: nv
    end function c_lda_bsqrt_ad

    integer(c_int32_t) function c_lda_bvariance(ctx, var_out, nx) bind(C, name="lda_bvariance")
      import :: c_int32_t, c_size_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      real(c_double), intent(inout) :: var_out(*)
      integer(c_size_t), value :: nx
    end function c_lda_bvariance

    integer(c_int32_t) function c_lda_brandomize(ctx, seed, x_out, nx) bind(C, name="lda_brandomize")
      import :: c_int32_t, c_int64_t, c_size_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      integer(c_int64_t), value :: seed
      real(c_double), intent(inout) :: x_out(*)
      integer(c_size_t), value :: nx
    end function c_lda_brandomize

    integer(c_int32_t) function c_lda_set_obs_times(ctx, n, time_hours) bind(C, name="lda_set_obs_times")
      import :: c_int32_t, c_size_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      integer(c_size_t), value :: n
      real(c_double), intent(in) :: time_hours(*)
    end function c_lda_set_obs_times

    integer(c_int32_t) function c_lda_set_analysis_time(ctx, hours) bind(C, name="lda_set_analysis_time")
      import :: c_int32_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      real(c_double), value :: hours
    end function c_lda_set_analysis_time

    integer(c_int32_t) function c_lda_set_ensemble(ctx, k, n, members, order) bind(C, name="lda_set_ensemble")
      import :: c_int32_t, c_size_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      integer(c_size_t), value :: k, n
      real(c_double), intent(in) :: members(*)
      integer(c_int32_t), value :: order
    end function c_lda_set_ensemble

    integer(c_int32_t) function c_lda_set_step_model(ctx, step, tl, ad, user, time_step_hours) &
         bind(C, name="lda_set_step_model")
      import :: c_int32_t, c_double, c_ptr, c_funptr
      type(c_ptr), value :: ctx
      type(c_funptr), value :: step, tl, ad
      type(c_ptr), value :: user
      real(c_double), value :: time_step_hours
    end function c_lda_set_step_model

    integer(c_int32_t) function c_lda_l4dvar_check(ctx, nslots, seed, step_dot, chained_dot) &
         bind(C, name="lda_l4dvar_check")
      import :: c_int32_t, c_int64_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      integer(c_int32_t), value :: nslots
      integer(c_int64_t), value :: seed
      real(c_double), intent(out) :: step_dot, chained_dot
    end function c_lda_l4dvar_check

    integer(c_int32_t) function c_lda_grid_info(ctx, kind, nlat, nlon, vertical, nlev) bind(C, name="lda_grid_info")
      import :: c_int32_t, c_size_t, c_ptr
      type(c_ptr), value :: ctx
      integer(c_int32_t), intent(out) :: kind, vertical
      integer(c_size_t), intent(out) :: nlat, nlon, nlev
    end function c_lda_grid_info

    integer(c_int32_t) function c_lda_grid_coords(ctx, lat, nlat, lon, nlon, lev, nlev) bind(C, name="lda_grid_coords")
      import :: c_int32_t, c_size_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      real(c_double), intent(inout) :: lat(*), lon(*), lev(*)
      integer(c_size_t), value :: nlat, nlon, nlev
    end function c_lda_grid_coords

    integer(c_int32_t) function c_lda_var_count(ctx, n) bind(C, name="lda_var_count")
      import :: c_int32_t, c_ptr
      type(c_ptr), value :: ctx
      integer(c_int32_t), intent(out) :: n
    end function c_lda_var_count

    integer(c_int32_t) function c_lda_var_name(ctx, index, buf, len, needed) bind(C, name="lda_var_name")
      import :: c_int32_t, c_size_t, c_char, c_ptr
      type(c_ptr), value :: ctx
      integer(c_int32_t), value :: index
      character(kind=c_char), intent(inout) :: buf(*)
      integer(c_size_t), value :: len
      integer(c_size_t), intent(out) :: needed
    end function c_lda_var_name

    integer(c_int32_t) function c_lda_var_layout(ctx, index, nlev, offset, length) bind(C, name="lda_var_layout")
      import :: c_int32_t, c_size_t, c_ptr
      type(c_ptr), value :: ctx
      integer(c_int32_t), value :: index
      integer(c_int32_t), intent(out) :: nlev
      integer(c_size_t), intent(out) :: offset, length
    end function c_lda_var_layout

    integer(c_int32_t) function c_lda_obs_h(ctx, x, nx, hx_out, qc_out, n) bind(C, name="lda_obs_h")
      import :: c_int32_t, c_size_t, c_double, c_ptr
      type(c_ptr), value :: ctx, x, qc_out          ! x, qc_out may be c_null_ptr
      integer(c_size_t), value :: nx, n
      real(c_double), intent(inout) :: hx_out(*)
    end function c_lda_obs_h

    integer(c_int32_t) function c_lda_obs_h_ad(ctx, y, n, x_out, nx) bind(C, name="lda_obs_h_ad")
      import :: c_int32_t, c_size_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      real(c_double), intent(in) :: y(*)
      integer(c_size_t), value :: n, nx
      real(c_double), intent(inout) :: x_out(*)
    end function c_lda_obs_h_ad

    integer(c_int32_t) function c_lda_bsqrt_noise(ctx, seed, trials, u_nonlin, ut_nonlin, adjoint) &
         bind(C, name="lda_bsqrt_noise")
      import :: c_int32_t, c_int64_t, c_double, c_ptr
      type(c_ptr), value :: ctx
      integer(c_int64_t), value :: seed
      integer(c_int32_t), value :: trials
      real(c_double), intent(out) :: u_nonlin, ut_nonlin, adjoint
    end function c_lda_bsqrt_noise

    type(c_ptr) function c_lda_version() bind(C, name="lda_version")
      import :: c_ptr
    end function c_lda_version

    integer(c_size_t) function c_strlen(s) bind(C, name="strlen")
      import :: c_size_t, c_ptr
      type(c_ptr), value :: s
    end function c_strlen
  end interface

contains

  ! ---------------------------------------------------------------------------------------------------------------
  ! String helpers
  ! ---------------------------------------------------------------------------------------------------------------

  !> Fortran string -> NUL-terminated C string (trailing blanks removed).
  pure function c_string(s) result(cs)
    character(len=*), intent(in) :: s
    character(kind=c_char, len=len_trim(s) + 1) :: cs
    cs = trim(s) // c_null_char
  end function c_string

  !> Fortran string -> NUL-terminated array of C characters (for arguments passed by c_loc).
  pure function c_chars(s) result(a)
    character(len=*), intent(in) :: s
    character(kind=c_char), allocatable :: a(:)
    integer :: i, n
    n = len_trim(s)
    allocate(a(n + 1))
    do i = 1, n
      a(i) = s(i:i)
    end do
    a(n + 1) = c_null_char
  end function c_chars

  !> NUL-terminated C string -> Fortran string ('' for a null pointer).
  function f_string(p) result(s)
    type(c_ptr), intent(in) :: p
    character(len=:), allocatable :: s
    character(kind=c_char), pointer :: chars(:)
    integer :: i, n
    if (.not. c_associated(p)) then
      s = ''
      return
    end if
    n = int(c_strlen(p))
    call c_f_pointer(p, chars, [n])
    allocate(character(len=n) :: s)
    do i = 1, n
      s(i:i) = chars(i)
    end do
  end function f_string

  subroutine clear_error(ctx)
    type(lda_context), intent(inout) :: ctx
    if (allocated(ctx%local_error)) deallocate(ctx%local_error)
  end subroutine clear_error

  subroutine fail(ctx, code, message, ierr)
    type(lda_context), intent(inout) :: ctx
    integer, intent(in) :: code
    character(len=*), intent(in) :: message
    integer, intent(out) :: ierr
    ctx%local_error = message
    ierr = code
  end subroutine fail

  logical function lda_context_is_null(self)
    class(lda_context), intent(in) :: self
    lda_context_is_null = .not. c_associated(self%ptr)
  end function lda_context_is_null

  ! ---------------------------------------------------------------------------------------------------------------
  ! Context
  ! ---------------------------------------------------------------------------------------------------------------

  !> Opens a bundle. On failure the context stays null and lda_last_error(ctx, msg) explains why.
  subroutine lda_open(ctx, bundle_dir, ierr, options)
    type(lda_context), intent(inout) :: ctx         !< context to open (must not be open already)
    character(len=*), intent(in) :: bundle_dir      !< bundle directory
    integer, intent(out) :: ierr                    !< LDA_OK, LDA_ERR_BUNDLE, LDA_ERR_BACKEND,
                                                    !< LDA_ERR_INVALID_ARGUMENT (options, already open), ...
    character(len=*), intent(in), optional :: options  !< TOML options, one `key = value` per line (join lines
                                                       !< with new_line('a')), e.g. 'output = "increment"'
    character(kind=c_char), allocatable, target :: copts(:)
    type(c_ptr) :: optr
    call clear_error(ctx)
    if (c_associated(ctx%ptr)) then
      call fail(ctx, LDA_ERR_INVALID_ARGUMENT, 'lda_open: the context is already open; call lda_close first', ierr)
      return
    end if
    optr = c_null_ptr
    if (present(options)) then
      copts = c_chars(options)
      optr = c_loc(copts)
    end if
    ierr = int(c_lda_open(c_string(bundle_dir), optr, ctx%ptr))
  end subroutine lda_open

  !> Releases the context (required once per successful lda_open). Bound arrays are not touched. A null context
  !> is accepted; afterwards the context is null and may be opened again. Called from inside one of the context's
  !> own step-model callbacks it is refused (LDA_ERR_NOT_READY) and the context stays open.
  subroutine lda_close(ctx, ierr)
    type(lda_context), intent(inout) :: ctx         !< context to close
    integer, intent(out), optional :: ierr          !< LDA_OK, LDA_ERR_NOT_READY (from a callback: still open),
                                                    !< LDA_ERR_INVALID_ARGUMENT (a copy of the handle was closed
                                                    !< already), or LDA_ERR_INTERNAL
    integer :: st
    call clear_error(ctx)
    st = int(c_lda_close(ctx%ptr))
    ! Still open only when refused as a re-entrant call; otherwise the handle is no context any more.
    if (st /= LDA_ERR_NOT_READY) ctx%ptr = c_null_ptr
    if (present(ierr)) ierr = st
  end subroutine lda_close

  !> Message of the last failed call on ctx ('' if none). Truncated to len(message); 512 characters suffice.
  subroutine lda_last_error(ctx, message)
    type(lda_context), intent(in) :: ctx            !< context (may be null: then the last lda_open failure)
    character(len=*), intent(out) :: message        !< the message
    if (allocated(ctx%local_error)) then
      message = ctx%local_error
    else
      message = f_string(c_lda_last_error(ctx%ptr))
    end if
  end subroutine lda_last_error

  !> latentda version string.
  function lda_version() result(version)
    character(len=:), allocatable :: version        !< e.g. '0.1.0'
    version = f_string(c_lda_version())
  end function lda_version

  !> Identifier of bundle variable `name` for lda_set_obs (an identifier, not a Fortran array index), or -1.
  function lda_var_index(ctx, name, ierr) result(id)
    type(lda_context), intent(inout) :: ctx         !< open context
    character(len=*), intent(in) :: name            !< variable name, e.g. 't'
    integer, intent(out), optional :: ierr          !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (unknown name), ...
    integer(c_int32_t) :: id                        !< identifier (>= 0), or -1 on failure
    integer(c_int32_t) :: idx
    integer :: st
    call clear_error(ctx)
    st = int(c_lda_var_index(ctx%ptr, c_string(name), idx))
    id = -1_c_int32_t
    if (st == LDA_OK) id = idx
    if (present(ierr)) ierr = st
  end function lda_var_index

  ! ---------------------------------------------------------------------------------------------------------------
  ! Binding host fields (generic lda_bind_field)
  ! ---------------------------------------------------------------------------------------------------------------

  integer function bind_ptr(ctx, name, p, double, shp) result(ierr)
    type(lda_context), intent(inout) :: ctx
    character(len=*), intent(in) :: name
    type(c_ptr), intent(in) :: p
    logical, intent(in) :: double
    integer(c_int64_t), intent(in) :: shp(:)
    integer(c_int32_t) :: ndim
    call clear_error(ctx)
    ndim = int(size(shp), c_int32_t)
    if (double) then
      ierr = int(c_lda_bind_field_f64(ctx%ptr, c_string(name), p, ndim, shp, ORDER_FORTRAN))
    else
      ierr = int(c_lda_bind_field_f32(ctx%ptr, c_string(name), p, ndim, shp, ORDER_FORTRAN))
    end if
  end function bind_ptr

  !> Binds a single-precision surface field (nlon, nlat) in place.
  subroutine lda_bind_field_r4_2(ctx, name, field, ierr)
    type(lda_context), intent(inout) :: ctx                   !< open context
    character(len=*), intent(in) :: name                      !< bundle variable name
    real(c_float), contiguous, target, intent(inout) :: field(:,:)  !< (nlon, nlat); must outlive the binding
    integer, intent(out) :: ierr                              !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (name, shape)
    type(c_ptr) :: p
    p = c_null_ptr
    if (size(field) > 0) p = c_loc(field)
    ierr = bind_ptr(ctx, name, p, .false., int(shape(field), c_int64_t))
  end subroutine lda_bind_field_r4_2

  !> Binds a single-precision upper-air field (nlon, nlat, nlev) in place.
  subroutine lda_bind_field_r4_3(ctx, name, field, ierr)
    type(lda_context), intent(inout) :: ctx                   !< open context
    character(len=*), intent(in) :: name                      !< bundle variable name
    real(c_float), contiguous, target, intent(inout) :: field(:,:,:)  !< (nlon, nlat, nlev); must outlive binding
    integer, intent(out) :: ierr                              !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (name, shape)
    type(c_ptr) :: p
    p = c_null_ptr
    if (size(field) > 0) p = c_loc(field)
    ierr = bind_ptr(ctx, name, p, .false., int(shape(field), c_int64_t))
  end subroutine lda_bind_field_r4_3

  !> Binds a double-precision surface field (nlon, nlat) in place.
  subroutine lda_bind_field_r8_2(ctx, name, field, ierr)
    type(lda_context), intent(inout) :: ctx                   !< open context
    character(len=*), intent(in) :: name                      !< bundle variable name
    real(c_double), contiguous, target, intent(inout) :: field(:,:)  !< (nlon, nlat); must outlive the binding
    integer, intent(out) :: ierr                              !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (name, shape)
    type(c_ptr) :: p
    p = c_null_ptr
    if (size(field) > 0) p = c_loc(field)
    ierr = bind_ptr(ctx, name, p, .true., int(shape(field), c_int64_t))
  end subroutine lda_bind_field_r8_2

  !> Binds a double-precision upper-air field (nlon, nlat, nlev) in place.
  subroutine lda_bind_field_r8_3(ctx, name, field, ierr)
    type(lda_context), intent(inout) :: ctx                   !< open context
    character(len=*), intent(in) :: name                      !< bundle variable name
    real(c_double), contiguous, target, intent(inout) :: field(:,:,:)  !< (nlon, nlat, nlev); must outlive binding
    integer, intent(out) :: ierr                              !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (name, shape)
    type(c_ptr) :: p
    p = c_null_ptr
    if (size(field) > 0) p = c_loc(field)
    ierr = bind_ptr(ctx, name, p, .true., int(shape(field), c_int64_t))
  end subroutine lda_bind_field_r8_3

  ! ---------------------------------------------------------------------------------------------------------------
  ! Observations and analysis
  ! ---------------------------------------------------------------------------------------------------------------

  !> Sets (copies) the observations for the next analyses. All arrays must have the same length >= 1.
  subroutine lda_set_obs(ctx, var, lat, lon, level, value, sigma, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer(c_int32_t), intent(in) :: var(:)         !< variable identifiers from lda_var_index (-1: unknown)
    real(c_double), intent(in) :: lat(:)             !< latitude, degrees north
    real(c_double), intent(in) :: lon(:)             !< longitude, degrees east
    real(c_double), intent(in) :: level(:)           !< vertical coordinate (e.g. sigma); ignored for surface
    real(c_double), intent(in) :: value(:)           !< observed value, in the variable's units
    real(c_double), intent(in) :: sigma(:)           !< observation error standard deviation (> 0)
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (lengths differ or 0)
    integer :: n
    call clear_error(ctx)
    n = size(var)
    call check_obs_lengths(ctx, 'lda_set_obs', n, [size(lat), size(lon), size(level), size(value), size(sigma)], ierr)
    if (allocated(ctx%local_error)) return
    ierr = int(c_lda_set_obs(ctx%ptr, int(n, c_size_t), var, lat, lon, level, value, sigma))
  end subroutine lda_set_obs

  !> Sets the withheld observations of the next analyses (lda_set_withheld in latentda.h), copied; arrays as for
  !> lda_set_obs, size 0 clears them. They never enter an analysis: each report (lda_report_json, section
  !> 'withheld') compares them with the background and the analysis, a check without truth.
  subroutine lda_set_withheld(ctx, var, lat, lon, level, value, sigma, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer(c_int32_t), intent(in) :: var(:)         !< variable identifiers from lda_var_index (-1: unknown)
    real(c_double), intent(in) :: lat(:)             !< latitude, degrees north
    real(c_double), intent(in) :: lon(:)             !< longitude, degrees east
    real(c_double), intent(in) :: level(:)           !< vertical coordinate (e.g. sigma); ignored for surface
    real(c_double), intent(in) :: value(:)           !< observed value, in the variable's units
    real(c_double), intent(in) :: sigma(:)           !< observation error standard deviation (> 0)
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (lengths differ)
    integer :: n
    call clear_error(ctx)
    n = size(var)
    call check_obs_lengths(ctx, 'lda_set_withheld', n, [size(lat), size(lon), size(level), size(value), size(sigma)], ierr)
    if (allocated(ctx%local_error)) return
    ierr = int(c_lda_set_withheld(ctx%ptr, int(n, c_size_t), var, lat, lon, level, value, sigma))
  end subroutine lda_set_withheld

  !> Fails with LDA_ERR_INVALID_ARGUMENT, naming the call and the first array, when an observation array's length
  !> (lens: lat, lon, level, value, sigma) differs from n, the length of var.
  subroutine check_obs_lengths(ctx, what, n, lens, ierr)
    type(lda_context), intent(inout) :: ctx
    character(len=*), intent(in) :: what
    integer, intent(in) :: n, lens(5)
    integer, intent(out) :: ierr
    character(len=5), parameter :: names(5) = ['lat  ', 'lon  ', 'level', 'value', 'sigma']
    character(len=16) :: sz(2)
    integer :: i
    ierr = LDA_OK
    do i = 1, 5
      if (lens(i) /= n) then
        write(sz(1), '(i0)') lens(i)
        write(sz(2), '(i0)') n
        call fail(ctx, LDA_ERR_INVALID_ARGUMENT, what // ": '" // trim(names(i)) // "' has " // trim(sz(1)) // &
             " values but 'var' has " // trim(sz(2)) // "; all arrays need equal length", ierr)
        return
      end if
    end do
  end subroutine check_obs_lengths

  !> Sets the observation times (hours from the analysis time, the start of the 4D-Var window) of the observations
  !> set last, in their order. lda_set_obs resets them to 0. Only method 'l4dvar' uses them.
  subroutine lda_set_obs_times(ctx, time_hours, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context with observations set
    real(c_double), intent(in) :: time_hours(:)      !< one time per observation, hours
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (count differs)
    call clear_error(ctx)
    ierr = int(c_lda_set_obs_times(ctx%ptr, int(size(time_hours), c_size_t), time_hours))
  end subroutine lda_set_obs_times

  !> Sets the time of this and later analyses, hours from any fixed epoch the host chooses (lda_set_analysis_time in
  !> latentda.h). The hybrid's online mix (option mix_candidates) scores the last cycle's candidate forecasts only at
  !> the time they are valid (that analysis' time plus mix_lead_hours): call it before every lda_analyse when cycling
  !> with the mix, so that a skipped cycle is noted instead of scored against observations of another time.
  subroutine lda_set_analysis_time(ctx, hours, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    real(c_double), intent(in) :: hours              !< analysis time, hours
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (not finite),
                                                     !< LDA_ERR_NULL_POINTER (context not open)
    call clear_error(ctx)
    ierr = int(c_lda_set_analysis_time(ctx%ptr, hours))
  end subroutine lda_set_analysis_time

  !> Sets the ensemble members of the B in force (lda_set_ensemble in latentda.h), copied: members(n, k), one column
  !> per member in the state layout (n = lda_state_dim: the variables in order, each as its bound field), physical
  !> units, k >= 2; size(members, 2) = 0 removes them. Method 'hybrid' then adds the latent ensemble B and method
  !> '3dvar' becomes hybrid 3DEnVar (options ensemble_gamma, ensemble_localisation_km, ensemble_localisation_model_km).
  subroutine lda_set_ensemble(ctx, members, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    real(c_double), intent(in) :: members(:, :)      !< (state size, k)
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (k = 1, n), LDA_ERR_INVALID_DATA
    call clear_error(ctx)
    ierr = int(c_lda_set_ensemble(ctx%ptr, int(size(members, 2), c_size_t), int(size(members, 1), c_size_t), &
         members, ORDER_FORTRAN))
  end subroutine lda_set_ensemble

  !> Installs the host's forecast model (bind(C) procedures with the interfaces lda_step_fn, lda_step_tl_fn,
  !> lda_step_ad_fn) as the step model of method 'l4dvar', replacing the bundle's. The procedures must stay valid
  !> while installed (module procedures are); user (default: null) is passed to every call.
  subroutine lda_set_step_model(ctx, step, tl, ad, time_step_hours, ierr, user)
    type(lda_context), intent(inout) :: ctx          !< open context
    procedure(lda_step_fn) :: step                   !< x_next = M(x)
    procedure(lda_step_tl_fn) :: tl                  !< dx_next = M'(x) dx
    procedure(lda_step_ad_fn) :: ad                  !< dx = M'(x)^T dx_next
    real(c_double), intent(in) :: time_step_hours    !< time step of one call, hours (> 0)
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (time step)
    type(c_ptr), intent(in), optional :: user        !< the host's context pointer for the callbacks
    type(c_ptr) :: u
    call clear_error(ctx)
    u = c_null_ptr
    if (present(user)) u = user
    ierr = int(c_lda_set_step_model(ctx%ptr, c_funloc(step), c_funloc(tl), c_funloc(ad), u, time_step_hours))
  end subroutine lda_set_step_model

  !> The host's nonlinear model alone (no TL, no AD): what the hybrid's online mix (option mix_score = "model")
  !> forecasts its candidates with. Method 'l4dvar' with it fails with LDA_ERR_INVALID_ARGUMENT naming the missing
  !> callback; use lda_set_step_model for that.
  subroutine lda_set_forecast_model(ctx, step, time_step_hours, ierr, user)
    type(lda_context), intent(inout) :: ctx          !< open context
    procedure(lda_step_fn) :: step                   !< x_next = M(x)
    real(c_double), intent(in) :: time_step_hours    !< time step of one call, hours (> 0)
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (time step)
    type(c_ptr), intent(in), optional :: user        !< the host's context pointer for the callback
    type(c_ptr) :: u
    call clear_error(ctx)
    u = c_null_ptr
    if (present(user)) u = user
    ierr = int(c_lda_set_step_model(ctx%ptr, c_funloc(step), c_null_funptr, c_null_funptr, u, time_step_hours))
  end subroutine lda_set_forecast_model

  !> Removes the host's step model (method 'l4dvar' then uses the bundle's, if any).
  subroutine lda_clear_step_model(ctx, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer, intent(out) :: ierr                     !< LDA_OK
    call clear_error(ctx)
    ierr = int(c_lda_set_step_model(ctx%ptr, c_null_funptr, c_null_funptr, c_null_funptr, c_null_ptr, 1.0_c_double))
  end subroutine lda_clear_step_model

  !> Adjoint tests of the step model (the host's, else the bundle's) at the bound background: one step, and the
  !> chained 4D-Var transform (latent B, decoder, nslots - 1 steps). Relative errors; float32 graphs give ~1e-7.
  subroutine lda_l4dvar_check(ctx, nslots, step_dot, chained_dot, ierr, seed)
    type(lda_context), intent(inout) :: ctx          !< open context, every field bound
    integer, intent(in) :: nslots                    !< slots of the chained test (>= 1)
    real(c_double), intent(out) :: step_dot          !< |<M'dx,u> - <dx,M'^T u>| / max, one step
    real(c_double), intent(out) :: chained_dot       !< the same for the chained transform
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_NOT_READY (no step model, field unbound), ...
    integer(c_int64_t), intent(in), optional :: seed  !< seed of the random vectors (default 1)
    integer(c_int64_t) :: s
    call clear_error(ctx)
    s = 1_c_int64_t
    if (present(seed)) s = seed
    ierr = int(c_lda_l4dvar_check(ctx%ptr, int(nslots, c_int32_t), s, step_dot, chained_dot))
  end subroutine lda_l4dvar_check

  !> Runs an analysis on the bound fields; on success the bound arrays hold the result (option `output`).
  subroutine lda_analyse(ctx, ierr, method)
    type(lda_context), intent(inout) :: ctx          !< open context with every field bound and observations set
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_NOT_READY (field not bound, no obs),
                                                     !< LDA_ERR_INVALID_DATA (NaN/Inf in a field), LDA_ERR_SOLVER,
                                                     !< LDA_ERR_INVALID_ARGUMENT (method), LDA_ERR_BACKEND
    character(len=*), intent(in), optional :: method  !< 'l3dvar', '3dvar', 'hybrid' or 'l4dvar' (default: option)
    character(kind=c_char), allocatable, target :: cm(:)
    type(c_ptr) :: mptr
    call clear_error(ctx)
    mptr = c_null_ptr
    if (present(method)) then
      cm = c_chars(method)
      mptr = c_loc(cm)
    end if
    ierr = int(c_lda_analyse(ctx%ptr, mptr))
  end subroutine lda_analyse

  !> QC flag (LDA_QC_*) of every observation of the last successful analysis, in lda_set_obs order.
  subroutine lda_obs_qc(ctx, flags, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer(c_int32_t), intent(inout) :: flags(:)    !< one flag per observation; written only on success
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_NOT_READY, LDA_ERR_INVALID_ARGUMENT (size)
    integer(c_int32_t), allocatable :: tmp(:)
    call clear_error(ctx)
    allocate(tmp(max(size(flags), 1)))
    ierr = int(c_lda_obs_qc(ctx%ptr, tmp, int(size(flags), c_size_t)))
    if (ierr == LDA_OK) flags = tmp(1:size(flags))
  end subroutine lda_obs_qc

  !> JSON report of the last successful analysis (solver history, O-B/O-A per variable, QC counts, timings).
  subroutine lda_report_json(ctx, json, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    character(len=:), allocatable, intent(out) :: json  !< the report (allocated on success)
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_NOT_READY
    character(kind=c_char), allocatable, target :: buf(:)
    integer(c_size_t) :: needed, needed2
    integer :: i
    call clear_error(ctx)
    needed = 0
    ierr = int(c_lda_report_json(ctx%ptr, c_null_ptr, 0_c_size_t, needed))
    if (ierr /= LDA_ERR_BUFFER_TOO_SMALL) return
    allocate(buf(needed))
    ierr = int(c_lda_report_json(ctx%ptr, c_loc(buf), needed, needed2))
    if (ierr /= LDA_OK) return
    allocate(character(len=int(needed) - 1) :: json)
    do i = 1, int(needed) - 1
      json(i:i) = buf(i)
    end do
  end subroutine lda_report_json

  !> One number of the report, by dot path, e.g. 'variables.t.omb_rms', 'solver.j_final', 'qc_counts.used'.
  subroutine lda_report_number(ctx, path, value, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    character(len=*), intent(in) :: path             !< dot-separated path into the JSON report
    real(c_double), intent(inout) :: value           !< the number; written only on success
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (no such number),
                                                     !< LDA_ERR_NOT_READY (no analysis yet)
    real(c_double) :: v
    call clear_error(ctx)
    ierr = int(c_lda_report_number(ctx%ptr, c_string(path), v))
    if (ierr == LDA_OK) value = v
  end subroutine lda_report_number

  ! ---------------------------------------------------------------------------------------------------------------
  ! B operator (U, U^T with B = U U^T) for a host's own variational system: the latent B by default, the hybrid or
  ! static B with option b_operator = "hybrid" | "static" at lda_open (docs/b-operator.md)
  ! ---------------------------------------------------------------------------------------------------------------

  !> Control-vector length n of the B operator, or -1 on failure.
  function lda_control_size(ctx, ierr) result(n)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer, intent(out), optional :: ierr           !< LDA_OK, LDA_ERR_NULL_POINTER
    integer(c_size_t) :: n                           !< control size (the latent size for the latent B)
    integer(c_size_t) :: m
    integer :: st
    call clear_error(ctx)
    st = int(c_lda_control_size(ctx%ptr, m))
    n = -1_c_size_t
    if (st == LDA_OK) n = m
    if (present(ierr)) ierr = st
  end function lda_control_size

  !> Length of a full model state (all channels x nlat x nlon), or -1 on failure.
  function lda_state_size(ctx, ierr) result(n)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer, intent(out), optional :: ierr           !< LDA_OK, LDA_ERR_NULL_POINTER
    integer(c_size_t) :: n                           !< state length
    integer(c_size_t) :: m
    integer :: st
    call clear_error(ctx)
    st = int(c_lda_state_size(ctx%ptr, m))
    n = -1_c_size_t
    if (st == LDA_OK) n = m
    if (present(ierr)) ierr = st
  end function lda_state_size

  !> lda_control_size as a default integer (PDAF's dim_cvec), or -1 on failure. A size beyond huge(0) is
  !> LDA_ERR_INVALID_ARGUMENT (then use lda_control_size, integer(c_size_t)). Example:
  !>     integer :: dim_cvec
  !>     dim_cvec = lda_control_dim(ctx, ierr)
  function lda_control_dim(ctx, ierr) result(n)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer, intent(out), optional :: ierr           !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (too large), ...
    integer :: n                                     !< control size as a default integer
    integer(c_size_t) :: m
    integer :: st
    m = lda_control_size(ctx, st)
    call to_default(ctx, m, 'lda_control_dim', n, st)
    if (present(ierr)) ierr = st
  end function lda_control_dim

  !> lda_state_size as a default integer (PDAF's dim_p / dim_state), or -1 on failure; see lda_control_dim.
  function lda_state_dim(ctx, ierr) result(n)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer, intent(out), optional :: ierr           !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (too large), ...
    integer :: n                                     !< state length as a default integer
    integer(c_size_t) :: m
    integer :: st
    m = lda_state_size(ctx, st)
    call to_default(ctx, m, 'lda_state_dim', n, st)
    if (present(ierr)) ierr = st
  end function lda_state_dim

  !> A size_t as a default integer, or -1 with LDA_ERR_INVALID_ARGUMENT when it does not fit (st: in/out status).
  subroutine to_default(ctx, m, what, n, st)
    type(lda_context), intent(inout) :: ctx
    integer(c_size_t), intent(in) :: m
    character(len=*), intent(in) :: what
    integer, intent(out) :: n
    integer, intent(inout) :: st
    n = -1
    if (st /= LDA_OK) return
    if (m > int(huge(n), c_size_t)) then
      call fail(ctx, LDA_ERR_INVALID_ARGUMENT, what // ': the size does not fit a default integer; use the ' // &
           'integer(c_size_t) function without _dim', st)
      return
    end if
    n = int(m)
  end subroutine to_default

  !> The measured float32 noise floor of U and U^T at the linearisation point (docs/b-operator.md): relative
  !> nonlinearity of U and of U^T, and the adjoint mismatch, the worst over `trials` random trials. Stop a host
  !> solver on |grad J| / |grad J0| above about 10 times the largest, not on an absolute change of J.
  subroutine lda_bsqrt_noise(ctx, u_nonlin, ut_nonlin, adjoint, ierr, seed, trials)
    type(lda_context), intent(inout) :: ctx          !< open context, every field bound
    real(c_double), intent(out) :: u_nonlin          !< |U(a v1 + b v2) - a U v1 - b U v2| / (|a||U v1| + |b||U v2|)
    real(c_double), intent(out) :: ut_nonlin         !< the same for U^T
    real(c_double), intent(out) :: adjoint           !< |<U v, y> - <v, U^T y>| / max(|<U v, y>|, |<v, U^T y>|)
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_NOT_READY (field unbound), ...
    integer(c_int64_t), intent(in), optional :: seed  !< seed of the random vectors (default 1)
    integer, intent(in), optional :: trials          !< random trials, 1..100 (default 3)
    integer(c_int64_t) :: sd
    integer(c_int32_t) :: nt
    call clear_error(ctx)
    sd = 1_c_int64_t
    if (present(seed)) sd = seed
    nt = 3_c_int32_t
    if (present(trials)) nt = int(trials, c_int32_t)
    ierr = int(c_lda_bsqrt_noise(ctx%ptr, sd, nt, u_nonlin, ut_nonlin, adjoint))
  end subroutine lda_bsqrt_noise

  ! ---------------------------------------------------------------------------------------------------------------
  ! Layout queries: the grid and the state layout (of lda_bsqrt's x, lda_obs_h's x, ...)
  ! ---------------------------------------------------------------------------------------------------------------

  !> The bundle's grid: kind (LDA_GRID_*), sizes, vertical coordinate (LDA_VERTICAL_*: the unit of the levels and of
  !> lda_set_obs's level). Fields are (nlon, nlat, nlev) arrays, (nlon, nlat) for surface variables.
  subroutine lda_grid_info(ctx, kind, nlat, nlon, vertical, nlev, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer, intent(out) :: kind                     !< LDA_GRID_REGULAR or LDA_GRID_GAUSSIAN
    integer, intent(out) :: nlat                     !< number of latitudes
    integer, intent(out) :: nlon                     !< number of longitudes
    integer, intent(out) :: vertical                 !< LDA_VERTICAL_SIGMA or LDA_VERTICAL_PRESSURE
    integer, intent(out) :: nlev                     !< number of model levels
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (context)
    integer(c_int32_t) :: k, v
    integer(c_size_t) :: na, no, nl
    call clear_error(ctx)
    kind = -1
    vertical = -1
    nlat = -1
    nlon = -1
    nlev = -1
    ierr = int(c_lda_grid_info(ctx%ptr, k, na, no, v, nl))
    if (ierr /= LDA_OK) return
    kind = int(k)
    vertical = int(v)
    nlat = int(na)
    nlon = int(no)
    nlev = int(nl)
  end subroutine lda_grid_info

  !> The grid coordinates: latitudes (degrees north, north to south), longitudes (degrees east, increasing) and
  !> model levels (top to bottom). Sizes must be those of lda_grid_info; written only on success.
  subroutine lda_grid_coords(ctx, lat, lon, lev, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    real(c_double), intent(inout) :: lat(:)          !< nlat latitudes
    real(c_double), intent(inout) :: lon(:)          !< nlon longitudes
    real(c_double), intent(inout) :: lev(:)          !< nlev levels
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (a size differs)
    call clear_error(ctx)
    ierr = int(c_lda_grid_coords(ctx%ptr, lat, int(size(lat), c_size_t), lon, int(size(lon), c_size_t), lev, &
         int(size(lev), c_size_t)))
  end subroutine lda_grid_coords

  !> Number of bundle variables; their identifiers are 0 .. nvar-1 in state order.
  subroutine lda_var_count(ctx, nvar, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer, intent(out) :: nvar                     !< number of variables (-1 on failure)
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (context)
    integer(c_int32_t) :: n
    call clear_error(ctx)
    nvar = -1
    ierr = int(c_lda_var_count(ctx%ptr, n))
    if (ierr == LDA_OK) nvar = int(n)
  end subroutine lda_var_count

  !> Name of variable `id` (0-based identifier, as from lda_var_index).
  subroutine lda_var_name(ctx, id, name, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer, intent(in) :: id                        !< identifier, 0 .. nvar-1
    character(len=*), intent(inout) :: name          !< the name, blank-padded; written only on success
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (id out of range),
                                                     !< LDA_ERR_BUFFER_TOO_SMALL (name shorter than the name)
    character(kind=c_char) :: buf(257)
    integer(c_size_t) :: needed
    integer :: i, n
    character(len=16) :: sz
    call clear_error(ctx)
    ierr = int(c_lda_var_name(ctx%ptr, int(id, c_int32_t), buf, int(size(buf), c_size_t), needed))
    if (ierr /= LDA_OK) return
    n = int(needed) - 1
    if (n > len(name)) then
      write(sz, '(i0)') n
      call fail(ctx, LDA_ERR_BUFFER_TOO_SMALL, 'lda_var_name: the name has ' // trim(sz) // ' characters, more than len(name)', &
           ierr)
      return
    end if
    name = ''
    do i = 1, n
      name(i:i) = buf(i)
    end do
  end subroutine lda_var_name

  !> Where variable `id` lives in a state vector x (lda_bsqrt, lda_obs_h, ...): x(offset+1 : offset+length), an
  !> (nlon, nlat, nlev) array ((nlon, nlat) when nlev = 0: a surface variable) in the same order as a bound field.
  subroutine lda_var_layout(ctx, id, nlev, offset, length, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context
    integer, intent(in) :: id                        !< identifier, 0 .. nvar-1
    integer, intent(out) :: nlev                     !< levels, 0 for a surface variable
    integer, intent(out) :: offset                   !< elements before the variable's block (0-based offset)
    integer, intent(out) :: length                   !< elements of the block: max(nlev, 1) * nlat * nlon
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (id out of range, too large)
    integer(c_int32_t) :: nl
    integer(c_size_t) :: off, len
    call clear_error(ctx)
    nlev = -1
    offset = -1
    length = -1
    ierr = int(c_lda_var_layout(ctx%ptr, int(id, c_int32_t), nl, off, len))
    if (ierr /= LDA_OK) return
    if (off + len > int(huge(offset), c_size_t)) then
      call fail(ctx, LDA_ERR_INVALID_ARGUMENT, 'lda_var_layout: the state is too large for default integers', ierr)
      return
    end if
    nlev = int(nl)
    offset = int(off)
    length = int(len)
  end subroutine lda_var_layout

  ! ---------------------------------------------------------------------------------------------------------------
  ! H as a service: latentda's observation operator for the observations set by lda_set_obs
  ! ---------------------------------------------------------------------------------------------------------------

  !> hx = H x for every observation set (lda_set_obs order), NaN where the geometric checks reject it; bit-identical
  !> to an analysis's H x_b on the same background. x: a state vector (state layout), or absent for the bound fields.
  subroutine lda_obs_h(ctx, hx, ierr, x, qc)
    type(lda_context), intent(inout) :: ctx          !< open context with observations set
    real(c_double), intent(inout) :: hx(:)           !< one value per observation; written on success
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_NOT_READY (no obs, field unbound),
                                                     !< LDA_ERR_INVALID_ARGUMENT (sizes), LDA_ERR_INVALID_DATA (NaN in x)
    real(c_double), intent(in), optional, target, contiguous :: x(:)  !< state, lda_state_size values
    integer(c_int32_t), intent(inout), optional, target, contiguous :: qc(:)  !< geometric QC flag per observation
    type(c_ptr) :: xp, qp
    integer(c_size_t) :: nx
    character(len=16) :: sz
    call clear_error(ctx)
    xp = c_null_ptr
    qp = c_null_ptr
    nx = 0
    if (present(x)) then
      nx = int(size(x), c_size_t)
      if (size(x) > 0) xp = c_loc(x)
    end if
    if (present(qc)) then
      if (size(qc) /= size(hx)) then
        write(sz, '(i0)') size(qc)
        call fail(ctx, LDA_ERR_INVALID_ARGUMENT, 'lda_obs_h: qc has ' // trim(sz) // ' values, hx has a different count', ierr)
        return
      end if
      if (size(qc) > 0) qp = c_loc(qc)
    end if
    if (present(x) .and. size(x) == 0) then
      call fail(ctx, LDA_ERR_INVALID_ARGUMENT, 'lda_obs_h: x is empty (omit x to read the bound fields)', ierr)
      return
    end if
    ierr = int(c_lda_obs_h(ctx%ptr, xp, nx, hx, qp, int(size(hx), c_size_t)))
  end subroutine lda_obs_h

  !> x = H^T y, the exact adjoint of lda_obs_h (values of rejected observations in y are ignored).
  subroutine lda_obs_h_ad(ctx, y, x, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context with observations set
    real(c_double), intent(in) :: y(:)               !< one value per observation
    real(c_double), intent(inout) :: x(:)            !< lda_state_size values, overwritten on success
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (sizes), LDA_ERR_NOT_READY,
                                                     !< LDA_ERR_INVALID_DATA (non-finite y of a located observation)
    call clear_error(ctx)
    ierr = int(c_lda_obs_h_ad(ctx%ptr, y, int(size(y), c_size_t), x, int(size(x), c_size_t)))
  end subroutine lda_obs_h_ad

  !> (Re)linearises U (option b_operator) at the background in the bound arrays (automatic only at the first
  !> lda_bsqrt, lda_bsqrt_ad, lda_bvariance or lda_brandomize after a bind: call it again whenever the background in
  !> the bound arrays changed, e.g. after lda_analyse).
  subroutine lda_b_linearise(ctx, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context, every field bound
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_NOT_READY, LDA_ERR_INVALID_DATA
    call clear_error(ctx)
    ierr = int(c_lda_b_linearise(ctx%ptr))
  end subroutine lda_b_linearise

  !> x = U v: model-space increment of control vector v. x is in state layout: variables in bundle order, each a
  !> (nlon, nlat[, nlev]) block in Fortran terms.
  subroutine lda_bsqrt(ctx, v, x, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context, every field bound
    real(c_double), intent(in) :: v(:)               !< control vector, lda_control_size values
    real(c_double), intent(inout) :: x(:)            !< increment, lda_state_size values; written on success
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (sizes), ...
    call clear_error(ctx)
    ierr = int(c_lda_bsqrt(ctx%ptr, v, int(size(v), c_size_t), x, int(size(x), c_size_t)))
  end subroutine lda_bsqrt

  !> v = U^T x: the exact adjoint of lda_bsqrt.
  subroutine lda_bsqrt_ad(ctx, x, v, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context, every field bound
    real(c_double), intent(in) :: x(:)               !< state-layout vector, lda_state_size values
    real(c_double), intent(inout) :: v(:)            !< control-space result, lda_control_size values
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (sizes), ...
    call clear_error(ctx)
    ierr = int(c_lda_bsqrt_ad(ctx%ptr, x, int(size(x), c_size_t), v, int(size(v), c_size_t)))
  end subroutine lda_bsqrt_ad

  !> var = diag(U U^T): the background-error variance of every state element (state layout, as x of lda_bsqrt).
  !> Exact, or a randomised estimate for a large latent space (option bg_check_samples); cached per linearisation.
  subroutine lda_bvariance(ctx, var, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context, every field bound
    real(c_double), intent(inout) :: var(:)          !< lda_state_size values; written on success
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (size), LDA_ERR_NOT_READY, ...
    call clear_error(ctx)
    ierr = int(c_lda_bvariance(ctx%ptr, var, int(size(var), c_size_t)))
  end subroutine lda_bvariance

  !> x = U xi with xi ~ N(0, I) drawn from seed: a random background-error sample (the same seed, the same draw).
  subroutine lda_brandomize(ctx, seed, x, ierr)
    type(lda_context), intent(inout) :: ctx          !< open context, every field bound
    integer(c_int64_t), intent(in) :: seed           !< seed of the draw
    real(c_double), intent(inout) :: x(:)            !< lda_state_size values; written on success
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (size), LDA_ERR_NOT_READY, ...
    call clear_error(ctx)
    ierr = int(c_lda_brandomize(ctx%ptr, seed, x, int(size(x), c_size_t)))
  end subroutine lda_brandomize

end module latentda
