!> latentda example: a Fortran model driver that keeps its fields in its own arrays and lets latentda analyse them
!> in place (the documented call order of docs/coupling.md).
!>
!> The toy model's state is u (m/s) and t (K) as (nlon, nlat, nlev) arrays and ps (Pa) as an (nlon, nlat) array,
!> latitudes north to south, levels top to bottom (the fixture bundles under tests/fixtures/). The driver reads its
!> background from a CF NetCDF file (through the NetCDF C library, so no netcdf-fortran is needed), binds its
!> arrays, reads observations from a CSV file (var,lat,lon,level,value,sigma), runs one analysis, prints the QC and
!> O-B/O-A summaries, and writes the analysed arrays as raw float64 (u, t, ps; Fortran order = C (lev, lat, lon)).
!>
!> Build from the repository root after `cargo build --release` (one command each, shown wrapped; -J keeps the
!> .mod files out of the source tree; docs/coupling.md has them on one line):
!>   shared: mkdir -p target/f && gfortran -std=f2008 -O2 -Jtarget/f fortran/latentda.f90 examples/fortran/driver.f90 \
!>             -o target/f/lda_fdriver -Ltarget/release -llatentda -lnetcdf -Wl,-rpath,$PWD/target/release
!>   static: mkdir -p target/f && gfortran -std=f2008 -O2 -Jtarget/f fortran/latentda.f90 examples/fortran/driver.f90 \
!>             -o target/f/lda_fdriver target/release/liblatentda.a $(nc-config --libs) -lhdf5 -lz -lstdc++ -lgcc_s \
!>             -lutil -lrt -lpthread -lm -ldl -Wl,-z,noexecstack
!> Against an installed latentda (scripts/install.sh): ../CMakeLists.txt (CMake) or ../Makefile (pkg-config).
!> Run:
!>   target/f/lda_fdriver tests/fixtures/tanh tests/fixtures/tanh/sample/background.nc tests/fixtures/tanh/sample/obs.csv an.bin
!>   options: --precision f32|f64 (default f64)  --method l3dvar|3dvar  --options 'TOML text'  --quiet

!> The few NetCDF C functions the driver needs, through iso_c_binding.
module driver_netcdf
  use, intrinsic :: iso_c_binding, only: c_int, c_size_t, c_char, c_double, c_float, c_null_char, c_ptr
  implicit none
  private
  public :: nc_open, nc_close, nc_inq_dimid, nc_inq_dimlen, nc_inq_varid, nc_get_var_double, nc_get_var_float
  public :: cstr
  interface
    integer(c_int) function nc_open(path, mode, ncid) bind(C, name="nc_open")
      import :: c_int, c_char
      character(kind=c_char), intent(in) :: path(*)
      integer(c_int), value :: mode
      integer(c_int), intent(out) :: ncid
    end function nc_open
    integer(c_int) function nc_close(ncid) bind(C, name="nc_close")
      import :: c_int
      integer(c_int), value :: ncid
    end function nc_close
    integer(c_int) function nc_inq_dimid(ncid, name, dimid) bind(C, name="nc_inq_dimid")
      import :: c_int, c_char
      integer(c_int), value :: ncid
      character(kind=c_char), intent(in) :: name(*)
      integer(c_int), intent(out) :: dimid
    end function nc_inq_dimid
    integer(c_int) function nc_inq_dimlen(ncid, dimid, len) bind(C, name="nc_inq_dimlen")
      import :: c_int, c_size_t
      integer(c_int), value :: ncid, dimid
      integer(c_size_t), intent(out) :: len
    end function nc_inq_dimlen
    integer(c_int) function nc_inq_varid(ncid, name, varid) bind(C, name="nc_inq_varid")
      import :: c_int, c_char
      integer(c_int), value :: ncid
      character(kind=c_char), intent(in) :: name(*)
      integer(c_int), intent(out) :: varid
    end function nc_inq_varid
    integer(c_int) function nc_get_var_double(ncid, varid, values) bind(C, name="nc_get_var_double")
      import :: c_int, c_double
      integer(c_int), value :: ncid, varid
      real(c_double), intent(out) :: values(*)
    end function nc_get_var_double
    integer(c_int) function nc_get_var_float(ncid, varid, values) bind(C, name="nc_get_var_float")
      import :: c_int, c_float
      integer(c_int), value :: ncid, varid
      real(c_float), intent(out) :: values(*)
    end function nc_get_var_float
  end interface
contains
  pure function cstr(s) result(cs)
    character(len=*), intent(in) :: s
    character(kind=c_char, len=len_trim(s) + 1) :: cs
    cs = trim(s) // c_null_char
  end function cstr
end module driver_netcdf

program lda_fdriver
  use, intrinsic :: iso_c_binding, only: c_int, c_size_t, c_int32_t, c_float, c_double
  use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan
  use driver_netcdf
  use latentda
  implicit none

  ! The model state: one of the two precisions is allocated. TARGET: latentda keeps pointers to these arrays.
  real(c_double), allocatable, target :: u8(:,:,:), t8(:,:,:), ps8(:,:)
  real(c_float), allocatable, target :: u4(:,:,:), t4(:,:,:), ps4(:,:)
  integer :: nlon, nlat, nlev
  logical :: single, quiet

  ! Observations of the cycle.
  integer(c_int32_t), allocatable :: var(:), qc(:)
  real(c_double), allocatable :: lat(:), lon(:), level(:), value(:), sigma(:)

  type(lda_context) :: ctx
  character(len=1024) :: bundle, background, obsfile, outfile, arg, method, options
  character(len=512) :: msg
  character(len=16), parameter :: qc_names(0:5) = [character(len=16) :: 'used', 'invalid', 'outside_domain', &
       'outside_vertical', 'unknown_variable', 'background_check']
  character(len=8), parameter :: keys(5) = [character(len=8) :: 'n_used', 'omb_mean', 'omb_rms', 'oma_mean', &
       'oma_rms']
  character(len=2), parameter :: names(3) = [character(len=2) :: 'u', 't', 'ps']
  real(c_double) :: stats(5), j0, j1
  integer :: ierr, i, k, nargs, un

  ! ---- arguments
  nargs = command_argument_count()
  if (nargs < 4) then
    write(*, '(a)') 'usage: lda_fdriver BUNDLE BACKGROUND.nc OBS.csv OUT.bin [--precision f32|f64] [--method M]' // &
         ' [--options TOML] [--quiet]'
    error stop 2
  end if
  call get_command_argument(1, bundle)
  call get_command_argument(2, background)
  call get_command_argument(3, obsfile)
  call get_command_argument(4, outfile)
  single = .false.
  quiet = .false.
  method = ''
  options = ''
  i = 5
  do while (i <= nargs)
    call get_command_argument(i, arg)
    select case (trim(arg))
    case ('--precision')
      i = i + 1
      call get_command_argument(i, arg)
      single = trim(arg) == 'f32'
    case ('--method')
      i = i + 1
      call get_command_argument(i, method)
    case ('--options')
      i = i + 1
      call get_command_argument(i, options)
    case ('--quiet')
      quiet = .true.
    case default
      write(*, '(2a)') 'unknown argument ', trim(arg)
      error stop 2
    end select
    i = i + 1
  end do

  ! ---- 1. the model's own background state
  call read_background(trim(background))

  ! ---- 2. open the bundle (once per run)
  if (len_trim(options) > 0) then
    call lda_open(ctx, trim(bundle), ierr, options=trim(options))
  else
    call lda_open(ctx, trim(bundle), ierr)
  end if
  call check('lda_open')

  ! ---- 3. bind every field in place (once; the arrays stay allocated until lda_close)
  if (single) then
    call lda_bind_field(ctx, 'u', u4, ierr)
    call check('lda_bind_field u')
    call lda_bind_field(ctx, 't', t4, ierr)
    call check('lda_bind_field t')
    call lda_bind_field(ctx, 'ps', ps4, ierr)
    call check('lda_bind_field ps')
  else
    call lda_bind_field(ctx, 'u', u8, ierr)
    call check('lda_bind_field u')
    call lda_bind_field(ctx, 't', t8, ierr)
    call check('lda_bind_field t')
    call lda_bind_field(ctx, 'ps', ps8, ierr)
    call check('lda_bind_field ps')
  end if

  ! ---- 4. observations of this cycle (copied by latentda)
  call read_obs(trim(obsfile))
  call lda_set_obs(ctx, var, lat, lon, level, value, sigma, ierr)
  call check('lda_set_obs')

  ! ---- 5. analyse: on success u, t, ps hold the analysis
  if (len_trim(method) > 0) then
    call lda_analyse(ctx, ierr, method=trim(method))
  else
    call lda_analyse(ctx, ierr)
  end if
  call check('lda_analyse')

  ! ---- 6. diagnostics
  allocate(qc(size(var)))
  call lda_obs_qc(ctx, qc, ierr)
  call check('lda_obs_qc')
  if (.not. quiet) then
    write(*, '(a, i0)') 'observations: ', size(var)
    do k = 0, 5
      if (count(qc == k) > 0) write(*, '(2x, 2a, 1x, i0)') 'qc ', qc_names(k), count(qc == k)
    end do
    j0 = 0
    j1 = 0
    call lda_report_number(ctx, 'solver.j_initial', j0, ierr)
    call lda_report_number(ctx, 'solver.j_final', j1, ierr)
    write(*, '(a, es13.6, a, es13.6)') 'J: ', j0, ' -> ', j1
    write(*, '(a4, a7, 4a13)') 'var', 'n_used', 'O-B mean', 'O-B rms', 'O-A mean', 'O-A rms'
    do i = 1, 3
      do k = 1, 5
        call lda_report_number(ctx, 'variables.' // trim(names(i)) // '.' // trim(keys(k)), stats(k), ierr)
        call check('lda_report_number')
      end do
      write(*, '(a4, i7, 4es13.4)') names(i), nint(stats(1)), stats(2:5)
    end do
  end if

  ! ---- 7. the model goes on with its analysed arrays; here: write them
  open(newunit=un, file=trim(outfile), access='stream', form='unformatted', status='replace')
  if (single) then
    write(un) real(u4, c_double), real(t4, c_double), real(ps4, c_double)
  else
    write(un) u8, t8, ps8
  end if
  close(un)

  call lda_close(ctx)

contains

  !> Stops with the latentda message if the last call failed.
  subroutine check(what)
    character(len=*), intent(in) :: what
    if (ierr == LDA_OK) return
    call lda_last_error(ctx, msg)
    write(*, '(a, i0, 4a)') 'latentda error ', ierr, ' in ', what, ': ', trim(msg)
    call lda_close(ctx)
    error stop 1
  end subroutine check

  subroutine nc_check(st, what)
    integer(c_int), intent(in) :: st
    character(len=*), intent(in) :: what
    if (st == 0) return
    write(*, '(3a, i0)') 'NetCDF error in ', what, ': ', st
    error stop 1
  end subroutine nc_check

  subroutine read_background(path)
    character(len=*), intent(in) :: path
    integer(c_int) :: nc, id
    integer(c_size_t) :: n(3)
    character(len=3), parameter :: dn(3) = [character(len=3) :: 'lon', 'lat', 'lev']
    integer :: d
    call nc_check(nc_open(cstr(path), 0_c_int, nc), path)
    do d = 1, 3
      call nc_check(nc_inq_dimid(nc, cstr(dn(d)), id), dn(d))
      call nc_check(nc_inq_dimlen(nc, id, n(d)), dn(d))
    end do
    nlon = int(n(1))
    nlat = int(n(2))
    nlev = int(n(3))
    ! NetCDF (lev, lat, lon) in C order is (lon, lat, lev) in Fortran order: read straight into the arrays.
    if (single) then
      allocate(u4(nlon, nlat, nlev), t4(nlon, nlat, nlev), ps4(nlon, nlat))
      call nc_check(nc_inq_varid(nc, cstr('u'), id), 'u')
      call nc_check(nc_get_var_float(nc, id, u4), 'u')
      call nc_check(nc_inq_varid(nc, cstr('t'), id), 't')
      call nc_check(nc_get_var_float(nc, id, t4), 't')
      call nc_check(nc_inq_varid(nc, cstr('ps'), id), 'ps')
      call nc_check(nc_get_var_float(nc, id, ps4), 'ps')
    else
      allocate(u8(nlon, nlat, nlev), t8(nlon, nlat, nlev), ps8(nlon, nlat))
      call nc_check(nc_inq_varid(nc, cstr('u'), id), 'u')
      call nc_check(nc_get_var_double(nc, id, u8), 'u')
      call nc_check(nc_inq_varid(nc, cstr('t'), id), 't')
      call nc_check(nc_get_var_double(nc, id, t8), 't')
      call nc_check(nc_inq_varid(nc, cstr('ps'), id), 'ps')
      call nc_check(nc_get_var_double(nc, id, ps8), 'ps')
    end if
    call nc_check(nc_close(nc), path)
  end subroutine read_background

  !> Reads var,lat,lon,level,value,sigma rows; unknown variable names get id -1 (flagged by QC, as the CLI does).
  subroutine read_obs(path)
    character(len=*), intent(in) :: path
    character(len=1024) :: line
    integer :: u, ios, n, c(5), j, m, st
    n = 0
    open(newunit=u, file=path, status='old', action='read')
    read(u, '(a)')                      ! header
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
      var(m) = lda_var_index(ctx, line(1:c(1) - 1), st)   ! -1 if not a bundle variable
      read(line(c(1) + 1:c(2) - 1), *) lat(m)
      read(line(c(2) + 1:c(3) - 1), *) lon(m)
      if (c(4) > c(3) + 1) then
        read(line(c(3) + 1:c(4) - 1), *) level(m)
      else
        level(m) = ieee_value(level(m), ieee_quiet_nan)   ! surface variable: no level
      end if
      read(line(c(4) + 1:c(5) - 1), *) value(m)
      read(line(c(5) + 1:), *) sigma(m)
    end do
    close(u)
  end subroutine read_obs

end program lda_fdriver
