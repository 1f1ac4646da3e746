!> latentda_mpi: latent data assimilation for domain-decomposed (MPI) Fortran models, through the C shim
!> include/latentda_mpi.h (library liblatentda_mpi, built with the host's own mpicc: scripts/install.sh --mpi).
!>
!> The communicator is passed as a default integer (the MPI_Fint handle of `use mpi`, or comm%MPI_VAL of
!> `use mpi_f08`) and converted with MPI_Comm_f2c in C, so this module needs no `use mpi` and works with the
!> host's MPI whatever it is. Call order (docs/mpi.md); [collective] calls must be made by every rank, in order:
!>
!>     use latentda_mpi
!>     type(lda_mpi_context) :: ctx
!>     call lda_mpi_open(ctx, bundle_dir, comm, ierr [, options, root])      ! [collective] once
!>     call lda_mpi_bind_patch(ctx, 'u', u, lon_start, lat_start, ierr [, halo])  ! [local] each variable
!>     iv = lda_mpi_var_index(ctx, 't')                                       ! [local]
!>     call lda_mpi_set_obs(ctx, var, lat, lon, level, value, sigma, ierr)    ! [local] this rank's obs (0 allowed)
!>     call lda_mpi_set_obs_times(ctx, time_hours, ierr)                      ! [local] optional, method 'l4dvar'
!>     call lda_mpi_set_withheld(ctx, var, lat, lon, level, value, sigma, ierr)  ! [local] optional: verify only
!>     call lda_mpi_set_analysis_time(ctx, hours, ierr)                       ! [local] optional: the cycle's time
!>     call lda_mpi_analyse(ctx, ierr [, method])                             ! [collective] each cycle
!>     call lda_mpi_obs_qc(ctx, flags, ierr); call lda_mpi_obs_hx(ctx, hxb, hxa, ierr)   ! [local]
!>     call lda_mpi_report_number(ctx, 'solver.j_final', j, ierr)             ! [local], same on every rank
!>     call lda_mpi_close(ctx)                                                ! [collective]
!>
!> Patches: each rank binds the part of each field it owns, as an array (nlon_p + 2 halo, nlat_p + 2 halo[, nlev])
!> whose halo (default width 0) latentda never reads or writes; lon_start / lat_start are the 1-based global indices
!> of the first interior point (latitudes north to south, as the bundle). Every grid point must belong to exactly
!> one rank. The same rules as lda_bind_field apply: contiguous, TARGET, allocated until rebound or closed.
!>
!> Errors: status codes are those of module latentda (LDA_OK, LDA_ERR_*), plus LDA_MPI_ERR_MPI. A collective call
!> returns the same ierr and message on every rank; a local failure (bind, set_obs) is also reported by the next
!> lda_mpi_analyse on every rank. A failed analysis writes no array on any rank.
module latentda_mpi
  use, intrinsic :: iso_c_binding, only: c_ptr, c_null_ptr, c_null_char, c_char, c_int, c_int32_t, c_int64_t, &
       c_size_t, c_float, c_double, c_loc, c_associated, c_f_pointer
  implicit none
  private

  public :: lda_mpi_context
  public :: lda_mpi_open, lda_mpi_close, lda_mpi_last_error, lda_mpi_bind_patch, lda_mpi_set_obs, lda_mpi_analyse
  public :: lda_mpi_set_obs_times, lda_mpi_set_withheld, lda_mpi_set_analysis_time, lda_mpi_set_error
  public :: lda_mpi_obs_qc, lda_mpi_obs_hx
  public :: lda_mpi_report_number, lda_mpi_report_json
  public :: lda_mpi_var_index, lda_mpi_var_count, lda_mpi_var_name, lda_mpi_var_nlev, lda_mpi_grid_info

  integer, parameter, public :: LDA_MPI_ERR_MPI = 100   !< an MPI call failed (MPI's message in lda_mpi_last_error)

  integer(c_int32_t), parameter :: ORDER_FORTRAN = 1     ! LDA_ORDER_FORTRAN

  !> Handle of one MPI coupling context. Open with lda_mpi_open, release with lda_mpi_close (collective; required).
  type :: lda_mpi_context
    private
    type(c_ptr) :: ptr = c_null_ptr
    character(len=:), allocatable :: local_error
  contains
    procedure :: is_null => lda_mpi_context_is_null   !< .true. if not open
  end type lda_mpi_context

  !> Binds this rank's patch of a field: real(c_float)/real(c_double), rank 2 (lon, lat) or 3 (lon, lat, lev).
  !> call lda_mpi_bind_patch(ctx, name, field, lon_start, lat_start, ierr [, halo])
  interface lda_mpi_bind_patch
    module procedure bind_r4_2, bind_r4_3, bind_r8_2, bind_r8_3
  end interface lda_mpi_bind_patch

  interface
    integer(c_int32_t) function c_open_f(bundle, options, comm, root, out) bind(C, name="lda_mpi_open_f")
      import :: c_int32_t, c_char, c_ptr, c_int
      character(kind=c_char), intent(in) :: bundle(*)
      type(c_ptr), value :: options
      integer(c_int), value :: comm
      integer(c_int32_t), value :: root
      type(c_ptr), intent(out) :: out
    end function c_open_f
    integer(c_int32_t) function c_close(ctx) bind(C, name="lda_mpi_close")
      import :: c_int32_t, c_ptr
      type(c_ptr), value :: ctx
    end function c_close
    type(c_ptr) function c_last_error(ctx) bind(C, name="lda_mpi_last_error")
      import :: c_ptr
      type(c_ptr), value :: ctx
    end function c_last_error
    integer(c_int32_t) function c_bind_f32(ctx, name, data, ndim, shape, order, lon0, lat0, halo) &
         bind(C, name="lda_mpi_bind_patch_f32")
      import :: c_int32_t, c_ptr, c_char, c_int64_t
      type(c_ptr), value :: ctx, data
      character(kind=c_char), intent(in) :: name(*)
      integer(c_int32_t), value :: ndim, order, halo
      integer(c_int64_t), intent(in) :: shape(*)
      integer(c_int64_t), value :: lon0, lat0
    end function c_bind_f32
    integer(c_int32_t) function c_bind_f64(ctx, name, data, ndim, shape, order, lon0, lat0, halo) &
         bind(C, name="lda_mpi_bind_patch_f64")
      import :: c_int32_t, c_ptr, c_char, c_int64_t
      type(c_ptr), value :: ctx, data
      character(kind=c_char), intent(in) :: name(*)
      integer(c_int32_t), value :: ndim, order, halo
      integer(c_int64_t), intent(in) :: shape(*)
      integer(c_int64_t), value :: lon0, lat0
    end function c_bind_f64
    integer(c_int32_t) function c_set_obs(ctx, n, var, lat, lon, level, value, sigma) bind(C, name="lda_mpi_set_obs")
      import :: c_int32_t, c_ptr, c_size_t, c_double
      type(c_ptr), value :: ctx
      integer(c_size_t), value :: n
      integer(c_int32_t), intent(in) :: var(*)
      real(c_double), intent(in) :: lat(*), lon(*), level(*), value(*), sigma(*)
    end function c_set_obs
    integer(c_int32_t) function c_set_withheld(ctx, n, var, lat, lon, level, value, sigma) &
         bind(C, name="lda_mpi_set_withheld")
      import :: c_int32_t, c_ptr, c_size_t, c_double
      type(c_ptr), value :: ctx
      integer(c_size_t), value :: n
      integer(c_int32_t), intent(in) :: var(*)
      real(c_double), intent(in) :: lat(*), lon(*), level(*), value(*), sigma(*)
    end function c_set_withheld
    integer(c_int32_t) function c_set_obs_times(ctx, n, t) bind(C, name="lda_mpi_set_obs_times")
      import :: c_int32_t, c_ptr, c_size_t, c_double
      type(c_ptr), value :: ctx
      integer(c_size_t), value :: n
      real(c_double), intent(in) :: t(*)
    end function c_set_obs_times
    integer(c_int32_t) function c_set_analysis_time(ctx, hours) bind(C, name="lda_mpi_set_analysis_time")
      import :: c_int32_t, c_ptr, c_double
      type(c_ptr), value :: ctx
      real(c_double), value :: hours
    end function c_set_analysis_time
    integer(c_int32_t) function c_set_error(ctx, code, message) bind(C, name="lda_mpi_set_error")
      import :: c_int32_t, c_ptr, c_char
      type(c_ptr), value :: ctx
      integer(c_int32_t), value :: code
      character(kind=c_char), intent(in) :: message(*)
    end function c_set_error
    integer(c_int32_t) function c_analyse(ctx, method) bind(C, name="lda_mpi_analyse")
      import :: c_int32_t, c_ptr
      type(c_ptr), value :: ctx, method
    end function c_analyse
    integer(c_int32_t) function c_obs_qc(ctx, flags, n) bind(C, name="lda_mpi_obs_qc")
      import :: c_int32_t, c_ptr, c_size_t
      type(c_ptr), value :: ctx
      integer(c_int32_t), intent(out) :: flags(*)
      integer(c_size_t), value :: n
    end function c_obs_qc
    integer(c_int32_t) function c_obs_hx(ctx, hxb, hxa, n) bind(C, name="lda_mpi_obs_hx")
      import :: c_int32_t, c_ptr, c_size_t, c_double
      type(c_ptr), value :: ctx
      real(c_double), intent(out) :: hxb(*), hxa(*)
      integer(c_size_t), value :: n
    end function c_obs_hx
    integer(c_int32_t) function c_report_json(ctx, buf, len, needed) bind(C, name="lda_mpi_report_json")
      import :: c_int32_t, c_ptr, c_size_t
      type(c_ptr), value :: ctx, buf
      integer(c_size_t), value :: len
      integer(c_size_t), intent(out) :: needed
    end function c_report_json
    integer(c_int32_t) function c_report_number(ctx, path, value) bind(C, name="lda_mpi_report_number")
      import :: c_int32_t, c_ptr, c_char, c_double
      type(c_ptr), value :: ctx
      character(kind=c_char), intent(in) :: path(*)
      real(c_double), intent(out) :: value
    end function c_report_number
    integer(c_int32_t) function c_var_index(ctx, name, idx) bind(C, name="lda_mpi_var_index")
      import :: c_int32_t, c_ptr, c_char
      type(c_ptr), value :: ctx
      character(kind=c_char), intent(in) :: name(*)
      integer(c_int32_t), intent(out) :: idx
    end function c_var_index
    integer(c_int32_t) function c_var_count(ctx, n) bind(C, name="lda_mpi_var_count")
      import :: c_int32_t, c_ptr
      type(c_ptr), value :: ctx
      integer(c_int32_t), intent(out) :: n
    end function c_var_count
    integer(c_int32_t) function c_var_name(ctx, idx, buf, len, needed) bind(C, name="lda_mpi_var_name")
      import :: c_int32_t, c_ptr, c_size_t, c_char
      type(c_ptr), value :: ctx
      integer(c_int32_t), value :: idx
      character(kind=c_char), intent(out) :: buf(*)
      integer(c_size_t), value :: len
      integer(c_size_t), intent(out) :: needed
    end function c_var_name
    integer(c_int32_t) function c_var_nlev(ctx, idx, nlev) bind(C, name="lda_mpi_var_nlev")
      import :: c_int32_t, c_ptr
      type(c_ptr), value :: ctx
      integer(c_int32_t), value :: idx
      integer(c_int32_t), intent(out) :: nlev
    end function c_var_nlev
    integer(c_int32_t) function c_grid_info(ctx, kind, nlat, nlon, vertical, nlev) bind(C, name="lda_mpi_grid_info")
      import :: c_int32_t, c_ptr, c_size_t
      type(c_ptr), value :: ctx
      integer(c_int32_t), intent(out) :: kind, vertical
      integer(c_size_t), intent(out) :: nlat, nlon, nlev
    end function c_grid_info
    integer(c_size_t) function c_strlen(s) bind(C, name="strlen")
      import :: c_size_t, c_ptr
      type(c_ptr), value :: s
    end function c_strlen
  end interface

contains

  pure function c_string(s) result(cs)
    character(len=*), intent(in) :: s
    character(kind=c_char, len=len_trim(s) + 1) :: cs
    cs = trim(s) // c_null_char
  end function c_string

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

  logical function lda_mpi_context_is_null(self)
    class(lda_mpi_context), intent(in) :: self
    lda_mpi_context_is_null = .not. c_associated(self%ptr)
  end function lda_mpi_context_is_null

  !> [collective] Opens the bundle on the analysing rank and a context on every rank of comm.
  subroutine lda_mpi_open(ctx, bundle_dir, comm, ierr, options, root)
    type(lda_mpi_context), intent(inout) :: ctx       !< context to open
    character(len=*), intent(in) :: bundle_dir        !< bundle directory (read on the analysing rank)
    integer, intent(in) :: comm                       !< the host's communicator (MPI_Fint handle)
    integer, intent(out) :: ierr                      !< LDA_OK or an LDA_ERR_* / LDA_MPI_ERR_MPI code, the same on
                                                      !< every rank
    character(len=*), intent(in), optional :: options !< TOML options (as lda_open), used on the analysing rank
    integer, intent(in), optional :: root             !< analysing rank (default 0; the same on every rank)
    character(kind=c_char), allocatable, target :: copts(:)
    type(c_ptr) :: optr
    integer(c_int32_t) :: r
    integer :: i, n
    if (allocated(ctx%local_error)) deallocate(ctx%local_error)
    optr = c_null_ptr
    if (present(options)) then
      n = len_trim(options)
      allocate(copts(n + 1))
      do i = 1, n
        copts(i) = options(i:i)
      end do
      copts(n + 1) = c_null_char
      optr = c_loc(copts)
    end if
    r = 0
    if (present(root)) r = int(root, c_int32_t)
    ierr = int(c_open_f(c_string(bundle_dir), optr, int(comm, c_int), r, ctx%ptr))
  end subroutine lda_mpi_open

  !> [collective] Releases the context on every rank (arrays untouched).
  subroutine lda_mpi_close(ctx, ierr)
    type(lda_mpi_context), intent(inout) :: ctx       !< context to close (null accepted)
    integer, intent(out), optional :: ierr            !< LDA_OK or LDA_MPI_ERR_MPI
    integer :: st
    st = int(c_close(ctx%ptr))
    ctx%ptr = c_null_ptr
    if (present(ierr)) ierr = st
  end subroutine lda_mpi_close

  !> [local] Message of the last failure on ctx (of the last failed lda_mpi_open if ctx is null).
  subroutine lda_mpi_last_error(ctx, message)
    type(lda_mpi_context), intent(in) :: ctx          !< context
    character(len=*), intent(out) :: message          !< the message (truncated to len(message); 2048 suffice)
    if (allocated(ctx%local_error)) then
      message = ctx%local_error
    else
      message = f_string(c_last_error(ctx%ptr))
    end if
  end subroutine lda_mpi_last_error

  integer function bind_ptr(ctx, name, p, double, shp, lon_start, lat_start, halo) result(ierr)
    type(lda_mpi_context), intent(inout) :: ctx
    character(len=*), intent(in) :: name
    type(c_ptr), intent(in) :: p
    logical, intent(in) :: double
    integer(c_int64_t), intent(in) :: shp(:)
    integer, intent(in) :: lon_start, lat_start
    integer, intent(in), optional :: halo
    integer(c_int32_t) :: h
    if (allocated(ctx%local_error)) deallocate(ctx%local_error)
    h = 0
    if (present(halo)) h = int(halo, c_int32_t)
    if (double) then
      ierr = int(c_bind_f64(ctx%ptr, c_string(name), p, int(size(shp), c_int32_t), shp, ORDER_FORTRAN, &
           int(lon_start - 1, c_int64_t), int(lat_start - 1, c_int64_t), h))
    else
      ierr = int(c_bind_f32(ctx%ptr, c_string(name), p, int(size(shp), c_int32_t), shp, ORDER_FORTRAN, &
           int(lon_start - 1, c_int64_t), int(lat_start - 1, c_int64_t), h))
    end if
  end function bind_ptr

  !> [local] Binds a single-precision surface patch (nlon_p + 2 halo, nlat_p + 2 halo) in place.
  subroutine bind_r4_2(ctx, name, field, lon_start, lat_start, ierr, halo)
    type(lda_mpi_context), intent(inout) :: ctx                    !< open context
    character(len=*), intent(in) :: name                           !< bundle variable name
    real(c_float), contiguous, target, intent(inout) :: field(:,:)  !< the patch with its halo
    integer, intent(in) :: lon_start, lat_start                    !< 1-based global index of the first interior point
    integer, intent(out) :: ierr                                   !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (name, shape)
    integer, intent(in), optional :: halo                          !< halo width (default 0)
    type(c_ptr) :: p
    p = c_null_ptr
    if (size(field) > 0) p = c_loc(field)
    ierr = bind_ptr(ctx, name, p, .false., int(shape(field), c_int64_t), lon_start, lat_start, halo)
  end subroutine bind_r4_2

  !> [local] Binds a single-precision upper-air patch (nlon_p + 2 halo, nlat_p + 2 halo, nlev) in place.
  subroutine bind_r4_3(ctx, name, field, lon_start, lat_start, ierr, halo)
    type(lda_mpi_context), intent(inout) :: ctx                      !< open context
    character(len=*), intent(in) :: name                             !< bundle variable name
    real(c_float), contiguous, target, intent(inout) :: field(:,:,:)  !< the patch with its halo
    integer, intent(in) :: lon_start, lat_start                      !< 1-based global index of the first interior point
    integer, intent(out) :: ierr                                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (name, shape)
    integer, intent(in), optional :: halo                            !< halo width (default 0)
    type(c_ptr) :: p
    p = c_null_ptr
    if (size(field) > 0) p = c_loc(field)
    ierr = bind_ptr(ctx, name, p, .false., int(shape(field), c_int64_t), lon_start, lat_start, halo)
  end subroutine bind_r4_3

  !> [local] Binds a double-precision surface patch (nlon_p + 2 halo, nlat_p + 2 halo) in place.
  subroutine bind_r8_2(ctx, name, field, lon_start, lat_start, ierr, halo)
    type(lda_mpi_context), intent(inout) :: ctx                     !< open context
    character(len=*), intent(in) :: name                            !< bundle variable name
    real(c_double), contiguous, target, intent(inout) :: field(:,:)  !< the patch with its halo
    integer, intent(in) :: lon_start, lat_start                     !< 1-based global index of the first interior point
    integer, intent(out) :: ierr                                    !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (name, shape)
    integer, intent(in), optional :: halo                           !< halo width (default 0)
    type(c_ptr) :: p
    p = c_null_ptr
    if (size(field) > 0) p = c_loc(field)
    ierr = bind_ptr(ctx, name, p, .true., int(shape(field), c_int64_t), lon_start, lat_start, halo)
  end subroutine bind_r8_2

  !> [local] Binds a double-precision upper-air patch (nlon_p + 2 halo, nlat_p + 2 halo, nlev) in place.
  subroutine bind_r8_3(ctx, name, field, lon_start, lat_start, ierr, halo)
    type(lda_mpi_context), intent(inout) :: ctx                       !< open context
    character(len=*), intent(in) :: name                              !< bundle variable name
    real(c_double), contiguous, target, intent(inout) :: field(:,:,:)  !< the patch with its halo
    integer, intent(in) :: lon_start, lat_start                       !< 1-based global index of the first interior point
    integer, intent(out) :: ierr                                      !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (name, shape)
    integer, intent(in), optional :: halo                             !< halo width (default 0)
    type(c_ptr) :: p
    p = c_null_ptr
    if (size(field) > 0) p = c_loc(field)
    ierr = bind_ptr(ctx, name, p, .true., int(shape(field), c_int64_t), lon_start, lat_start, halo)
  end subroutine bind_r8_3

  !> [local] This rank's observations (copied; all arrays of equal length, 0 allowed).
  subroutine lda_mpi_set_obs(ctx, var, lat, lon, level, value, sigma, ierr)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    integer(c_int32_t), intent(in) :: var(:)         !< variable identifiers from lda_mpi_var_index (-1: unknown)
    real(c_double), intent(in) :: lat(:)             !< latitude, degrees north
    real(c_double), intent(in) :: lon(:)             !< longitude, degrees east
    real(c_double), intent(in) :: level(:)           !< vertical coordinate; ignored for surface variables
    real(c_double), intent(in) :: value(:)           !< observed value
    real(c_double), intent(in) :: sigma(:)           !< observation error standard deviation
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (lengths differ)
    call put_obs(ctx, .false., var, lat, lon, level, value, sigma, ierr)
  end subroutine lda_mpi_set_obs

  !> [local] This rank's withheld observations (arrays as lda_mpi_set_obs; 0 clears them): gathered by the next
  !> analyses, never assimilated, compared with the background and the analysis in the report's "withheld" section.
  !> The set stays until set again.
  subroutine lda_mpi_set_withheld(ctx, var, lat, lon, level, value, sigma, ierr)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    integer(c_int32_t), intent(in) :: var(:)         !< variable identifiers from lda_mpi_var_index (-1: unknown)
    real(c_double), intent(in) :: lat(:)             !< latitude, degrees north
    real(c_double), intent(in) :: lon(:)             !< longitude, degrees east
    real(c_double), intent(in) :: level(:)           !< vertical coordinate; ignored for surface variables
    real(c_double), intent(in) :: value(:)           !< observed value
    real(c_double), intent(in) :: sigma(:)           !< observation error standard deviation
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (lengths differ)
    call put_obs(ctx, .true., var, lat, lon, level, value, sigma, ierr)
  end subroutine lda_mpi_set_withheld

  ! lda_mpi_set_obs (withheld false) or lda_mpi_set_withheld (true): the length check, then the C call.
  subroutine put_obs(ctx, withheld, var, lat, lon, level, value, sigma, ierr)
    type(lda_mpi_context), intent(inout) :: ctx
    logical, intent(in) :: withheld
    integer(c_int32_t), intent(in) :: var(:)
    real(c_double), intent(in) :: lat(:), lon(:), level(:), value(:), sigma(:)
    integer, intent(out) :: ierr
    integer(c_int32_t) :: dv(1)
    real(c_double) :: dd(1)
    integer(c_size_t) :: n
    character(len=:), allocatable :: what
    if (allocated(ctx%local_error)) deallocate(ctx%local_error)
    what = merge("lda_mpi_set_withheld", "lda_mpi_set_obs     ", withheld)
    n = int(size(var), c_size_t)
    if (any([size(lat), size(lon), size(level), size(value), size(sigma)] /= size(var))) then
      ctx%local_error = trim(what) // ": the arrays differ in length; all need size(var)"
      ! Remembered by the shim too, so that the next lda_mpi_analyse fails on every rank.
      ierr = int(c_set_error(ctx%ptr, 2_c_int32_t, c_string(ctx%local_error)))
      ierr = 2
      return
    end if
    dv = 0
    dd = 0
    if (withheld .and. n == 0) then
      ierr = int(c_set_withheld(ctx%ptr, n, dv, dd, dd, dd, dd, dd))
    else if (withheld) then
      ierr = int(c_set_withheld(ctx%ptr, n, var, lat, lon, level, value, sigma))
    else if (n == 0) then
      ierr = int(c_set_obs(ctx%ptr, n, dv, dd, dd, dd, dd, dd))
    else
      ierr = int(c_set_obs(ctx%ptr, n, var, lat, lon, level, value, sigma))
    end if
  end subroutine put_obs

  !> [local] Times (hours from the analysis time; method 'l4dvar') of this rank's observations, in their order.
  subroutine lda_mpi_set_obs_times(ctx, time_hours, ierr)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context with this rank's observations set
    real(c_double), intent(in) :: time_hours(:)      !< one time per observation of this rank
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (count differs)
    real(c_double) :: dummy(1)
    dummy = 0
    if (size(time_hours) == 0) then
      ierr = int(c_set_obs_times(ctx%ptr, 0_c_size_t, dummy))
    else
      ierr = int(c_set_obs_times(ctx%ptr, int(size(time_hours), c_size_t), time_hours))
    end if
  end subroutine lda_mpi_set_obs_times

  !> [local] The time of this and later analyses (hours from any fixed epoch), kept until set again; every rank sets
  !> the same. The hybrid's online mix (option mix_candidates) then scores its candidates only at the analysis they
  !> are valid for (lda_set_analysis_time of module latentda).
  subroutine lda_mpi_set_analysis_time(ctx, hours, ierr)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    real(c_double), intent(in) :: hours              !< analysis time, hours
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (not finite; also reported
                                                     !< by the next lda_mpi_analyse on every rank)
    ierr = int(c_set_analysis_time(ctx%ptr, hours))
  end subroutine lda_mpi_set_analysis_time

  !> [local] Records a failure of the host's own (e.g. reading its observations): the next lda_mpi_analyse then
  !> fails on every rank with this code and message, so a rank never has to leave the collective sequence alone.
  subroutine lda_mpi_set_error(ctx, code, message, ierr)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    integer, intent(in) :: code                      !< status the ranks should get (> 0, e.g. LDA_ERR_IO)
    character(len=*), intent(in) :: message          !< message for every rank
    integer, intent(out) :: ierr                     !< code (as a local call that failed), or LDA_ERR_INVALID_ARGUMENT
    ierr = int(c_set_error(ctx%ptr, int(code, c_int32_t), c_string(message)))
  end subroutine lda_mpi_set_error

  !> [collective] The analysis over the whole communicator; on success every bound patch holds the result.
  subroutine lda_mpi_analyse(ctx, ierr, method)
    type(lda_mpi_context), intent(inout) :: ctx       !< open context
    integer, intent(out) :: ierr                      !< the same status on every rank (LDA_OK, LDA_ERR_*)
    character(len=*), intent(in), optional :: method  !< as lda_analyse; the same on every rank
    character(kind=c_char), allocatable, target :: cm(:)
    type(c_ptr) :: mptr
    integer :: i, n
    if (allocated(ctx%local_error)) deallocate(ctx%local_error)
    mptr = c_null_ptr
    if (present(method)) then
      n = len_trim(method)
      allocate(cm(n + 1))
      do i = 1, n
        cm(i) = method(i:i)
      end do
      cm(n + 1) = c_null_char
      mptr = c_loc(cm)
    end if
    ierr = int(c_analyse(ctx%ptr, mptr))
  end subroutine lda_mpi_analyse

  !> [local] QC flags of this rank's observations (LDA_QC_* of module latentda), in its order.
  subroutine lda_mpi_obs_qc(ctx, flags, ierr)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    integer(c_int32_t), intent(inout) :: flags(:)    !< one per observation of this rank; written only on success
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_NOT_READY, LDA_ERR_INVALID_ARGUMENT (size)
    integer(c_int32_t), allocatable :: tmp(:)
    allocate(tmp(max(size(flags), 1)))
    ierr = int(c_obs_qc(ctx%ptr, tmp, int(size(flags), c_size_t)))
    if (ierr == 0) flags = tmp(1:size(flags))
  end subroutine lda_mpi_obs_qc

  !> [local] H(x_b) and H(x_a) of this rank's observations, in its order (NaN where rejected geometrically).
  subroutine lda_mpi_obs_hx(ctx, hxb, hxa, ierr)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    real(c_double), intent(inout) :: hxb(:)          !< H(x_b); written only on success
    real(c_double), intent(inout) :: hxa(:)          !< H(x_a); the same size
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_NOT_READY, LDA_ERR_INVALID_ARGUMENT (size)
    real(c_double), allocatable :: b(:), a(:)
    allocate(b(max(size(hxb), 1)), a(max(size(hxb), 1)))
    if (size(hxa) /= size(hxb)) then
      ierr = 2
      ctx%local_error = 'lda_mpi_obs_hx: hxb and hxa differ in size'
      return
    end if
    ierr = int(c_obs_hx(ctx%ptr, b, a, int(size(hxb), c_size_t)))
    if (ierr == 0) then
      hxb = b(1:size(hxb))
      hxa = a(1:size(hxa))
    end if
  end subroutine lda_mpi_obs_hx

  !> [local] One number of the report (the same on every rank), e.g. 'solver.j_final', 'mpi.gather_s'.
  subroutine lda_mpi_report_number(ctx, path, value, ierr)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    character(len=*), intent(in) :: path             !< dot-separated path into the JSON report
    real(c_double), intent(inout) :: value           !< the number; written only on success
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT, LDA_ERR_NOT_READY
    real(c_double) :: v
    ierr = int(c_report_number(ctx%ptr, c_string(path), v))
    if (ierr == 0) value = v
  end subroutine lda_mpi_report_number

  !> [local] The JSON report of the last successful analysis (the same on every rank).
  subroutine lda_mpi_report_json(ctx, json, ierr)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    character(len=:), allocatable, intent(out) :: json  !< the report (allocated on success)
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_NOT_READY
    character(kind=c_char), allocatable, target :: buf(:)
    integer(c_size_t) :: needed, needed2
    integer :: i
    needed = 0
    ierr = int(c_report_json(ctx%ptr, c_null_ptr, 0_c_size_t, needed))
    if (ierr /= 10) return
    allocate(buf(needed))
    ierr = int(c_report_json(ctx%ptr, c_loc(buf), needed, needed2))
    if (ierr /= 0) return
    allocate(character(len=int(needed) - 1) :: json)
    do i = 1, int(needed) - 1
      json(i:i) = buf(i)
    end do
  end subroutine lda_mpi_report_json

  !> [local] Identifier of variable name for lda_mpi_set_obs, or -1.
  function lda_mpi_var_index(ctx, name, ierr) result(id)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    character(len=*), intent(in) :: name             !< variable name
    integer, intent(out), optional :: ierr           !< LDA_OK, LDA_ERR_INVALID_ARGUMENT (unknown)
    integer(c_int32_t) :: id                         !< identifier (>= 0) or -1
    integer(c_int32_t) :: idx
    integer :: st
    st = int(c_var_index(ctx%ptr, c_string(name), idx))
    id = -1_c_int32_t
    if (st == 0) id = idx
    if (present(ierr)) ierr = st
  end function lda_mpi_var_index

  !> [local] Number of bundle variables (identifiers 0 .. n-1).
  integer function lda_mpi_var_count(ctx) result(n)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    integer(c_int32_t) :: m
    m = 0
    if (c_var_count(ctx%ptr, m) /= 0) m = 0
    n = int(m)
  end function lda_mpi_var_count

  !> [local] Name of variable identifier idx (0-based).
  subroutine lda_mpi_var_name(ctx, idx, name, ierr)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    integer, intent(in) :: idx                       !< identifier, 0-based
    character(len=*), intent(out) :: name            !< its name
    integer, intent(out) :: ierr                     !< LDA_OK, LDA_ERR_INVALID_ARGUMENT
    character(kind=c_char) :: buf(258)
    integer(c_size_t) :: needed
    integer :: i
    name = ''
    ierr = int(c_var_name(ctx%ptr, int(idx, c_int32_t), buf, 258_c_size_t, needed))
    if (ierr /= 0) return
    do i = 1, min(int(needed) - 1, len(name))
      name(i:i) = buf(i)
    end do
  end subroutine lda_mpi_var_name

  !> [local] Number of levels of variable idx (0 for a surface variable).
  integer function lda_mpi_var_nlev(ctx, idx) result(nlev)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    integer, intent(in) :: idx                       !< identifier, 0-based
    integer(c_int32_t) :: m
    m = 0
    if (c_var_nlev(ctx%ptr, int(idx, c_int32_t), m) /= 0) m = -1
    nlev = int(m)
  end function lda_mpi_var_nlev

  !> [local] Grid sizes of the bundle.
  subroutine lda_mpi_grid_info(ctx, nlon, nlat, nlev, ierr)
    type(lda_mpi_context), intent(inout) :: ctx      !< open context
    integer, intent(out) :: nlon, nlat, nlev         !< longitudes, latitudes, model levels
    integer, intent(out) :: ierr                     !< LDA_OK
    integer(c_int32_t) :: kind, vert
    integer(c_size_t) :: a, b, c
    ierr = int(c_grid_info(ctx%ptr, kind, a, b, vert, c))
    nlat = int(a)
    nlon = int(b)
    nlev = int(c)
  end subroutine lda_mpi_grid_info

end module latentda_mpi
