!> latentda MPI example: a Fortran model with a 2-D (longitude x latitude) domain decomposition that lets latentda
!> analyse its fields in place (docs/mpi.md).
!>
!> The ranks form a px x py grid (px blocks of longitudes, py blocks of latitudes; uneven blocks with --uneven). Each
!> rank holds its block of every bundle variable as an array (0:nx+1, 0:ny+1[, nlev]) with a one-point halo (set to
!> NaN: latentda never reads or writes it), reads its block of the background from a CF NetCDF file (NetCDF C
!> library through iso_c_binding), binds it with lda_mpi_bind_patch, takes a contiguous share of the observation
!> rows of a CSV file, runs the collective analysis and writes
!>   OUT.bin      the analysed fields as raw float64 in state layout (variables in bundle order, each (lon, lat, lev)
!>                in Fortran terms), each rank writing its own block with MPI-IO;
!>   OUT.bin.obs  per observation row: qc, H(x_b), H(x_a) as float64.
!>
!> Build (after scripts/mpi_check.sh or scripts/install.sh --mpi built liblatentda_mpi; one command):
!>   mpif90 -O2 -Jtarget/mpi fortran/latentda_mpi.f90 examples/mpi/driver.f90 -o target/mpi/driver_f \
!>          -Ltarget/mpi -llatentda_mpi -Ltarget/release -llatentda -lnetcdf -Wl,-rpath,$PWD/target/mpi:$PWD/target/release
!> Run:
!>   mpirun -n 4 target/mpi/driver_f models/speedy-t31 models/speedy-t31/sample/background.nc \
!>          models/speedy-t31/sample/obs.csv an.bin --grid 2x2 --uneven
!> Options: --grid PXxPY  --uneven  --root R  --method M  --quiet

!> The NetCDF C functions the driver needs.
module mpi_driver_netcdf
  use, intrinsic :: iso_c_binding, only: c_int, c_size_t, c_char, c_double, c_null_char
  implicit none
  private
  public :: nc_open, nc_close, nc_inq_varid, nc_get_vara_double, cstr
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
    integer(c_int) function nc_inq_varid(ncid, name, varid) bind(C, name="nc_inq_varid")
      import :: c_int, c_char
      integer(c_int), value :: ncid
      character(kind=c_char), intent(in) :: name(*)
      integer(c_int), intent(out) :: varid
    end function nc_inq_varid
    integer(c_int) function nc_get_vara_double(ncid, varid, start, count, values) bind(C, name="nc_get_vara_double")
      import :: c_int, c_size_t, c_double
      integer(c_int), value :: ncid, varid
      integer(c_size_t), intent(in) :: start(*), count(*)
      real(c_double), intent(out) :: values(*)
    end function nc_get_vara_double
  end interface
contains
  pure function cstr(s) result(cs)
    character(len=*), intent(in) :: s
    character(kind=c_char, len=len_trim(s) + 1) :: cs
    cs = trim(s) // c_null_char
  end function cstr
end module mpi_driver_netcdf

program lda_mpi_fdriver
  use, intrinsic :: iso_c_binding, only: c_int, c_size_t, c_int32_t, c_double
  use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan, ieee_is_nan
  use mpi
  use mpi_driver_netcdf
  use latentda_mpi
  implicit none

  !> One bundle variable's block on this rank: u3 (upper air) or u2 (surface), halo of one point.
  type :: field
    character(len=258) :: name = ''
    integer :: nlev = 0
    real(c_double), allocatable :: u3(:,:,:)
    real(c_double), allocatable :: u2(:,:)
  end type field

  type(field), allocatable, target :: f(:)
  type(lda_mpi_context) :: ctx
  integer :: rank, nprocs, px, py, ix, iy, ierr, nvar, nlon, nlat, nlev, i0, nx, j0, ny, v, k, root
  logical :: uneven, quiet
  character(len=1024) :: bundle, background, obsfile, outfile, arg, method, whfile, repfile
  character(len=4096) :: options
  character(len=:), allocatable :: json
  character(len=2048) :: msg
  integer(c_int32_t), allocatable :: var(:), qc(:)
  real(c_double), allocatable :: lat(:), lon(:), level(:), value(:), sigma(:), hxb(:), hxa(:)
  integer(c_int32_t), allocatable :: wvar(:)
  real(c_double), allocatable :: wlat(:), wlon(:), wlevel(:), wvalue(:), wsigma(:)
  integer :: first_row, nargs, i
  real(c_double) :: nan, j1, tg, ts, ta, hours
  logical :: have_time

  call MPI_Init(ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
  call MPI_Comm_size(MPI_COMM_WORLD, nprocs, ierr)
  nan = ieee_value(nan, ieee_quiet_nan)

  ! ---- arguments
  nargs = command_argument_count()
  if (nargs < 4) then
    if (rank == 0) write(*, '(a)') 'usage: driver_f BUNDLE BACKGROUND.nc OBS.csv OUT.bin [--grid PXxPY] [--uneven]' // &
         ' [--root R] [--method M] [--options TOML] [--withheld FILE] [--report FILE] [--analysis-time H] [--quiet]'
    call MPI_Finalize(ierr)
    stop 2
  end if
  call get_command_argument(1, bundle)
  call get_command_argument(2, background)
  call get_command_argument(3, obsfile)
  call get_command_argument(4, outfile)
  px = 0
  py = 0
  uneven = .false.
  quiet = .false.
  root = 0
  method = ''
  whfile = ''
  repfile = ''
  options = ''
  have_time = .false.
  hours = 0
  i = 5
  do while (i <= nargs)
    call get_command_argument(i, arg)
    select case (trim(arg))
    case ('--grid')
      i = i + 1
      call get_command_argument(i, arg)
      k = index(arg, 'x')
      read(arg(1:k - 1), *) px
      read(arg(k + 1:), *) py
    case ('--uneven')
      uneven = .true.
    case ('--quiet')
      quiet = .true.
    case ('--root')
      i = i + 1
      call get_command_argument(i, arg)
      read(arg, *) root
    case ('--method')
      i = i + 1
      call get_command_argument(i, method)
    case ('--options')
      i = i + 1
      call get_command_argument(i, options)
    case ('--withheld')
      i = i + 1
      call get_command_argument(i, whfile)
    case ('--report')
      i = i + 1
      call get_command_argument(i, repfile)
    case ('--analysis-time')
      i = i + 1
      call get_command_argument(i, arg)
      read(arg, *) hours
      have_time = .true.
    case default
      if (rank == 0) write(*, '(2a)') 'unknown argument ', trim(arg)
      call MPI_Abort(MPI_COMM_WORLD, 2, ierr)
    end select
    i = i + 1
  end do
  if (px * py /= nprocs) then            ! as square as possible
    py = 1
    do k = 1, nprocs
      if (k * k > nprocs) exit
      if (mod(nprocs, k) == 0) py = k
    end do
    px = nprocs / py
  end if
  ix = mod(rank, px)
  iy = rank / px

  ! ---- 1. open (collective): the communicator goes in as its Fortran handle
  if (len_trim(options) > 0) then
    call lda_mpi_open(ctx, trim(bundle), MPI_COMM_WORLD, ierr, options=trim(options), root=root)
  else
    call lda_mpi_open(ctx, trim(bundle), MPI_COMM_WORLD, ierr, root=root)
  end if
  if (ierr /= 0) then
    call lda_mpi_last_error(ctx, msg)
    write(*, '(a, i0, a, i0, 2a)') 'RESULT rank=', rank, ' status=', ierr, ' untouched=1 halo_ok=1 msg=', trim(msg)
    call MPI_Finalize(ierr)
    stop 1
  end if
  call lda_mpi_grid_info(ctx, nlon, nlat, nlev, ierr)
  nvar = lda_mpi_var_count(ctx)

  ! ---- 2. this rank's block of every variable (halo NaN), read from the background, bound in place
  call block(nlon, px, ix, i0, nx)
  call block(nlat, py, iy, j0, ny)
  allocate(f(nvar))
  call read_blocks()
  do v = 1, nvar
    if (f(v)%nlev > 0) then
      call lda_mpi_bind_patch(ctx, trim(f(v)%name), f(v)%u3, i0, j0, ierr, halo=1)
    else
      call lda_mpi_bind_patch(ctx, trim(f(v)%name), f(v)%u2, i0, j0, ierr, halo=1)
    end if
    ! A failed bind is reported again by lda_mpi_analyse on every rank: no rank leaves the sequence alone.
  end do

  ! ---- 3. observations: rows first_row .. first_row + n - 1 of the file go to this rank
  call read_obs(trim(obsfile), var, lat, lon, level, value, sigma, first_row)
  call lda_mpi_set_obs(ctx, var, lat, lon, level, value, sigma, ierr)
  ! observations to verify against, never assimilated (--withheld): shared out the same way
  if (len_trim(whfile) > 0) then
    call read_obs(trim(whfile), wvar, wlat, wlon, wlevel, wvalue, wsigma, k)
    call lda_mpi_set_withheld(ctx, wvar, wlat, wlon, wlevel, wvalue, wsigma, ierr)
  end if

  ! the cycle's time (--analysis-time), the same on every rank: the online mix scores only on-time forecasts
  if (have_time) call lda_mpi_set_analysis_time(ctx, hours, ierr)

  ! ---- 4. the analysis (collective)
  if (len_trim(method) > 0) then
    call lda_mpi_analyse(ctx, ierr, method=trim(method))
  else
    call lda_mpi_analyse(ctx, ierr)
  end if
  msg = ''
  if (ierr /= 0) call lda_mpi_last_error(ctx, msg)
  write(*, '(a, i0, a, i0, a, i0, 2a)') 'RESULT rank=', rank, ' status=', ierr, ' untouched=1 halo_ok=', &
       merge(1, 0, halo_is_nan()), ' msg=', trim(msg)
  if (ierr /= 0) then
    call lda_mpi_close(ctx)
    call MPI_Finalize(ierr)
    stop 1
  end if

  ! ---- 5. diagnostics: the same report on every rank, this rank's own QC flags and H(x)
  allocate(qc(size(var)), hxb(size(var)), hxa(size(var)))
  call lda_mpi_obs_qc(ctx, qc, ierr)
  call lda_mpi_obs_hx(ctx, hxb, hxa, ierr)
  if (.not. quiet) then
    j1 = 0
    tg = 0
    ts = 0
    ta = 0
    call lda_mpi_report_number(ctx, 'solver.j_final', j1, ierr)
    call lda_mpi_report_number(ctx, 'mpi.gather_s', tg, ierr)
    call lda_mpi_report_number(ctx, 'mpi.scatter_s', ts, ierr)
    call lda_mpi_report_number(ctx, 'mpi.analyse_s', ta, ierr)
    write(*, '(a, i0, a, i0, a, i0, a, 2(i0, a), es12.5, 3(a, f8.4), a)') 'rank ', rank, ': block lon ', i0, '+', nx, &
         ' lat ', j0, '+', ny, ', J_final ', j1, ', gather ', tg, ' s, analysis ', ta, ' s, scatter ', ts, ' s'
  end if

  ! ---- 6. output with MPI-IO (each rank its own block and observations); --report: the JSON report (last rank's)
  call write_output()
  if (len_trim(repfile) > 0 .and. rank == nprocs - 1) then
    call lda_mpi_report_json(ctx, json, ierr)
    if (ierr /= 0) call die('cannot read the report')
    open(newunit=k, file=trim(repfile), status='replace', action='write')
    write(k, '(a)') json
    close(k)
  end if
  call lda_mpi_close(ctx)
  call MPI_Finalize(ierr)

contains

  !> Block b (0-based) of p blocks of n points: start (1-based) and count; --uneven moves a third of the first block
  !> into the last one.
  subroutine block(n, p, b, start, count)
    integer, intent(in) :: n, p, b
    integer, intent(out) :: start, count
    integer :: base, rem, kk, shift
    base = n / p
    rem = mod(n, p)
    shift = 0
    if (uneven .and. p > 1) shift = base / 3
    start = 1
    count = 0
    do kk = 0, b
      start = start + count
      count = base
      if (kk < rem) count = count + 1
      if (kk == 0) count = count - shift
      if (kk == p - 1) count = count + shift
    end do
  end subroutine block

  subroutine read_blocks()
    integer(c_int) :: nc, id, st
    integer(c_size_t) :: start(3), cnt(3)
    real(c_double), allocatable :: tmp(:,:,:)
    character(len=258) :: name
    st = nc_open(cstr(trim(background)), 0_c_int, nc)
    if (st /= 0) call die('cannot open ' // trim(background))
    do v = 1, nvar
      call lda_mpi_var_name(ctx, v - 1, name, ierr)
      f(v)%name = name
      f(v)%nlev = lda_mpi_var_nlev(ctx, v - 1)
      allocate(tmp(nx, ny, max(f(v)%nlev, 1)))
      ! NetCDF's C-order (lev, lat, lon) start/count, 0-based.
      if (f(v)%nlev > 0) then
        start = [0_c_size_t, int(j0 - 1, c_size_t), int(i0 - 1, c_size_t)]
        cnt = [int(f(v)%nlev, c_size_t), int(ny, c_size_t), int(nx, c_size_t)]
      else
        start = [int(j0 - 1, c_size_t), int(i0 - 1, c_size_t), 0_c_size_t]
        cnt = [int(ny, c_size_t), int(nx, c_size_t), 1_c_size_t]
      end if
      st = nc_inq_varid(nc, cstr(trim(f(v)%name)), id)
      if (st == 0) st = nc_get_vara_double(nc, id, start, cnt, tmp)
      if (st /= 0) call die('cannot read ' // trim(f(v)%name))
      if (f(v)%nlev > 0) then
        allocate(f(v)%u3(0:nx + 1, 0:ny + 1, f(v)%nlev))
        f(v)%u3 = nan
        f(v)%u3(1:nx, 1:ny, :) = tmp
      else
        allocate(f(v)%u2(0:nx + 1, 0:ny + 1))
        f(v)%u2 = nan
        f(v)%u2(1:nx, 1:ny) = tmp(:, :, 1)
      end if
      deallocate(tmp)
    end do
    st = nc_close(nc)
  end subroutine read_blocks

  logical function halo_is_nan()
    halo_is_nan = .true.
    do v = 1, nvar
      if (f(v)%nlev > 0) then
        halo_is_nan = halo_is_nan .and. all(ieee_is_nan(f(v)%u3(0, :, :))) .and. all(ieee_is_nan(f(v)%u3(nx + 1, :, :))) &
             .and. all(ieee_is_nan(f(v)%u3(:, 0, :))) .and. all(ieee_is_nan(f(v)%u3(:, ny + 1, :)))
      else
        halo_is_nan = halo_is_nan .and. all(ieee_is_nan(f(v)%u2(0, :))) .and. all(ieee_is_nan(f(v)%u2(nx + 1, :))) &
             .and. all(ieee_is_nan(f(v)%u2(:, 0))) .and. all(ieee_is_nan(f(v)%u2(:, ny + 1)))
      end if
    end do
  end function halo_is_nan

  !> Reads var,lat,lon,level,value,sigma rows; keeps this rank's contiguous share (unknown variables get id -1),
  !> rows first_row + 1 .. first_row + size(var) of the file.
  subroutine read_obs(path, var, lat, lon, level, value, sigma, first_row)
    character(len=*), intent(in) :: path
    integer(c_int32_t), allocatable, intent(out) :: var(:)
    real(c_double), allocatable, intent(out) :: lat(:), lon(:), level(:), value(:), sigma(:)
    integer, intent(out) :: first_row
    character(len=1024) :: line
    integer :: u, ios, n, c(5), j, m, row, last, nrows
    nrows = 0
    open(newunit=u, file=path, status='old', action='read')
    read(u, '(a)')
    do
      read(u, '(a)', iostat=ios) line
      if (ios /= 0) exit
      if (len_trim(line) > 0) nrows = nrows + 1
    end do
    first_row = int((int(nrows, 8) * rank) / nprocs)
    last = int((int(nrows, 8) * (rank + 1)) / nprocs)
    n = last - first_row
    allocate(var(n), lat(n), lon(n), level(n), value(n), sigma(n))
    rewind(u)
    read(u, '(a)')
    m = 0
    row = 0
    do while (m < n)
      read(u, '(a)') line
      if (len_trim(line) == 0) cycle
      row = row + 1
      if (row <= first_row) cycle
      m = m + 1
      c(1) = index(line, ',')
      do j = 2, 5
        c(j) = c(j - 1) + index(line(c(j - 1) + 1:), ',')
      end do
      var(m) = lda_mpi_var_index(ctx, line(1:c(1) - 1))
      read(line(c(1) + 1:c(2) - 1), *) lat(m)
      read(line(c(2) + 1:c(3) - 1), *) lon(m)
      if (c(4) > c(3) + 1) then
        read(line(c(3) + 1:c(4) - 1), *) level(m)
      else
        level(m) = nan
      end if
      read(line(c(4) + 1:c(5) - 1), *) value(m)
      read(line(c(5) + 1:), *) sigma(m)
    end do
    close(u)
  end subroutine read_obs

  subroutine write_output()
    integer :: fh, l, j, nl, st
    integer(kind=MPI_OFFSET_KIND) :: base, off
    real(c_double), allocatable :: r3(:,:)
    if (rank == 0) then
      call MPI_File_delete(trim(outfile), MPI_INFO_NULL, st)
      call MPI_File_delete(trim(outfile) // '.obs', MPI_INFO_NULL, st)
    end if
    call MPI_Barrier(MPI_COMM_WORLD, st)
    call MPI_File_open(MPI_COMM_WORLD, trim(outfile), MPI_MODE_CREATE + MPI_MODE_WRONLY, MPI_INFO_NULL, fh, st)
    base = 0
    do v = 1, nvar
      nl = max(f(v)%nlev, 1)
      do l = 1, nl
        do j = 1, ny
          off = base + 8_MPI_OFFSET_KIND * ((int(l - 1, MPI_OFFSET_KIND) * nlat + (j0 - 1 + j - 1)) * nlon + (i0 - 1))
          if (f(v)%nlev > 0) then
            call MPI_File_write_at(fh, off, f(v)%u3(1:nx, j, l), nx, MPI_DOUBLE_PRECISION, MPI_STATUS_IGNORE, st)
          else
            call MPI_File_write_at(fh, off, f(v)%u2(1:nx, j), nx, MPI_DOUBLE_PRECISION, MPI_STATUS_IGNORE, st)
          end if
        end do
      end do
      base = base + 8_MPI_OFFSET_KIND * nl * nlat * nlon
    end do
    call MPI_File_close(fh, st)
    call MPI_File_open(MPI_COMM_WORLD, trim(outfile) // '.obs', MPI_MODE_CREATE + MPI_MODE_WRONLY, MPI_INFO_NULL, &
         fh, st)
    if (size(var) > 0) then
      allocate(r3(3, size(var)))
      r3(1, :) = real(qc, c_double)
      r3(2, :) = hxb
      r3(3, :) = hxa
      off = 24_MPI_OFFSET_KIND * first_row
      call MPI_File_write_at(fh, off, r3, 3 * size(var), MPI_DOUBLE_PRECISION, MPI_STATUS_IGNORE, st)
    end if
    call MPI_File_close(fh, st)
  end subroutine write_output

  subroutine die(what)
    character(len=*), intent(in) :: what
    write(*, '(a, i0, 2a)') 'rank ', rank, ': ', what
    call MPI_Abort(MPI_COMM_WORLD, 1, ierr)
  end subroutine die

end program lda_mpi_fdriver
