!> Worked example: the latent B operator as a PDAF-style control-variable transform (cvt / cvt_adj pair) for a host
!> that keeps its own 3D-Var minimiser. See docs/b-operator.md.
!>
!> Build (after `cargo build --release`), from the repository root:
!>   gfortran -std=f2008 -O2 -Jtarget fortran/latentda.f90 examples/fortran/cvt_latent_b.f90 -o target/cvt_latent_b \
!>     -Ltarget/release -llatentda -lnetcdf -lm -Wl,-rpath,$PWD/target/release
!> Run on a bundle with variables u, t (nlev levels) and ps, e.g. the test fixture:
!>   target/cvt_latent_b tests/fixtures/tanh
!> An optional second argument is the options text, e.g. 'b_operator = "hybrid"' for the hybrid latent-static B.
module latent_b_callbacks
  use iso_c_binding, only: c_double
  use latentda
  implicit none
  private
  public :: lda, init_latent_b, cvt, cvt_adj

  type(lda_context), save :: lda   !< opened once by the host: call lda_open(lda, bundle_dir, ierr)

contains

  !> Binds the host's background arrays and linearises U there (once per assimilation cycle).
  subroutine init_latent_b(u, t, ps, ierr)
    real(c_double), intent(inout), contiguous, target :: u(:,:,:), t(:,:,:), ps(:,:)
    integer, intent(out) :: ierr
    call lda_bind_field(lda, 'u', u, ierr);   if (ierr /= LDA_OK) return
    call lda_bind_field(lda, 't', t, ierr);   if (ierr /= LDA_OK) return
    call lda_bind_field(lda, 'ps', ps, ierr); if (ierr /= LDA_OK) return
    call lda_b_linearise(lda, ierr)
  end subroutine init_latent_b

  !> PDAF cvt: state increment Vv_p = U cv_p (dim_cvec = lda_control_size, dim_p = lda_state_size).
  subroutine cvt(iter, dim_p, dim_cvec, cv_p, Vv_p)
    integer, intent(in) :: iter, dim_p, dim_cvec
    real(c_double), intent(in) :: cv_p(dim_cvec)
    real(c_double), intent(out) :: Vv_p(dim_p)
    integer :: ierr
    if (iter < 0) Vv_p = 0.0_c_double   ! iter is part of PDAF's interface; unused here
    call lda_bsqrt(lda, cv_p, Vv_p, ierr)
    if (ierr /= LDA_OK) call fail(ierr)
  end subroutine cvt

  !> PDAF cvt_adj: cv_p = U^T Vcv_p.
  subroutine cvt_adj(iter, dim_p, dim_cvec, Vcv_p, cv_p)
    integer, intent(in) :: iter, dim_p, dim_cvec
    real(c_double), intent(in) :: Vcv_p(dim_p)
    real(c_double), intent(out) :: cv_p(dim_cvec)
    integer :: ierr
    if (iter < 0) cv_p = 0.0_c_double
    call lda_bsqrt_ad(lda, Vcv_p, cv_p, ierr)
    if (ierr /= LDA_OK) call fail(ierr)
  end subroutine cvt_adj

  subroutine fail(ierr)
    integer, intent(in) :: ierr
    character(len=1024) :: msg
    call lda_last_error(lda, msg)
    write (*, '(a,i0,2a)') 'latentda error ', ierr, ': ', trim(msg)
    error stop 1
  end subroutine fail

end module latent_b_callbacks

!> Opens a bundle, linearises the B operator at a smooth background and runs the adjoint test of the cvt/cvt_adj pair
!> a host minimiser would rely on: <U v, x> = <v, U^T x>; then checks diag B (lda_bvariance) against the mean square
!> of random draws U xi (lda_brandomize).
program cvt_latent_b
  use iso_c_binding, only: c_double, c_int64_t
  use latentda
  use latent_b_callbacks
  implicit none
  integer, parameter :: nlon = 16, nlat = 8, nlev = 3
  real(c_double), allocatable, target :: u(:,:,:), t(:,:,:), ps(:,:)
  integer, parameter :: ndraw = 400
  real(c_double), allocatable :: v(:), uv(:), x(:), utx(:), var(:), draw(:), draw2(:), msq(:)
  character(len=4096) :: bundle_dir, options
  integer :: ierr, n, m, i, j
  integer(c_int64_t) :: seed
  real(c_double) :: lhs, rhs, rel, ratio

  call get_command_argument(1, bundle_dir)
  call get_command_argument(2, options)
  call lda_open(lda, trim(bundle_dir), ierr, options=trim(options))
  if (ierr /= LDA_OK) then
    block
      character(len=1024) :: msg
      call lda_last_error(lda, msg)
      write (*, '(a,i0,2a)') 'lda_open failed ', ierr, ': ', trim(msg)
      error stop 1
    end block
  end if
  allocate (u(nlon, nlat, nlev), t(nlon, nlat, nlev), ps(nlon, nlat))
  do j = 1, nlat
    do i = 1, nlon
      u(i, j, :) = 10.0_c_double * cos(0.4_c_double * j)
      t(i, j, :) = 250.0_c_double + 5.0_c_double * sin(0.39_c_double * i)
      ps(i, j) = 1.0e5_c_double
    end do
  end do
  call init_latent_b(u, t, ps, ierr)
  if (ierr /= LDA_OK) error stop 2
  n = int(lda_control_size(lda, ierr))
  m = int(lda_state_size(lda, ierr))
  allocate (v(n), uv(m), x(m), utx(n))
  call random_number(v)
  v = v - 0.5_c_double
  call cvt(1, m, n, v, uv)
  call random_number(x)
  x = x - 0.5_c_double + uv / maxval(abs(uv))   ! a component along U v, so the products cannot cancel
  call cvt_adj(1, m, n, x, utx)
  lhs = dot_product(uv, x)
  rhs = dot_product(v, utx)
  rel = abs(lhs - rhs) / max(abs(lhs), abs(rhs))
  write (*, '(a,i0,a,i0)') 'control size ', n, ', state size ', m
  write (*, '(a,es16.8,a,es16.8,a,es9.2)') '<U v, x> = ', lhs, '  <v, U^T x> = ', rhs, '  rel diff ', rel
  if (rel > 1.0e-5_c_double) then
    write (*, '(a)') 'ADJOINT TEST FAILED'
    error stop 3
  end if
  write (*, '(a)') 'adjoint test passed'
  ! diag B against the mean square of draws U xi: the sums agree to sampling error (sqrt(2/ndraw) = 7 % per element).
  allocate (var(m), draw(m), draw2(m), msq(m))
  call lda_bvariance(lda, var, ierr)
  if (ierr /= LDA_OK) error stop 4
  msq = 0.0_c_double
  do i = 1, ndraw
    seed = int(i, c_int64_t)
    call lda_brandomize(lda, seed, draw, ierr)
    if (ierr /= LDA_OK) error stop 5
    msq = msq + draw**2 / ndraw
  end do
  call lda_brandomize(lda, 1_c_int64_t, draw2, ierr)
  call lda_brandomize(lda, 1_c_int64_t, draw, ierr)
  ratio = sum(msq) / sum(var)
  write (*, '(a,es12.4,a,f8.4)') 'sum of diag B ', sum(var), ', mean square of draws / diag B ', ratio
  call lda_close(lda)
  if (minval(var) < 0.0_c_double .or. abs(ratio - 1.0_c_double) > 0.1_c_double .or. any(draw /= draw2)) then
    write (*, '(a)') 'VARIANCE TEST FAILED'
    error stop 6
  end if
  write (*, '(a)') 'variance test passed'
end program cvt_latent_b
