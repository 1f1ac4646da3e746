!> lda_set_ensemble through the Fortran module (tests/ensemble_analysis.rs): k = 1 and a wrong member length are
!> LDA_ERR_INVALID_ARGUMENT with a message, a non-finite value LDA_ERR_INVALID_DATA, members(n, 3) is accepted, and
!> size(members, 2) = 0 removes them.
program ensemble_bindings
  use latentda
  use, intrinsic :: iso_c_binding, only: c_double
  use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_positive_inf
  implicit none
  type(lda_context) :: ctx
  integer :: ierr, n, i, k
  real(c_double), allocatable :: m(:, :)
  character(len=512) :: bundle, msg
  call get_command_argument(1, bundle)
  call lda_open(ctx, trim(bundle), ierr, options='self_test = false')
  if (ierr /= LDA_OK) stop 1
  n = lda_state_dim(ctx)
  allocate(m(n, 3))
  do k = 1, 3
    do i = 1, n
      m(i, k) = 280.0_c_double + modulo(i, 17) * 0.1_c_double + k
    end do
  end do
  call lda_set_ensemble(ctx, m(:, 1:1), ierr)
  call lda_last_error(ctx, msg)
  print '(a, i0, 2a)', 'k = 1: ierr ', ierr, ', ', trim(msg)
  if (ierr /= LDA_ERR_INVALID_ARGUMENT .or. index(msg, 'K >= 2') == 0) stop 2
  call lda_set_ensemble(ctx, m(1:n - 1, :), ierr)
  if (ierr /= LDA_ERR_INVALID_ARGUMENT) stop 3
  m(5, 2) = ieee_value(1.0_c_double, ieee_positive_inf)
  call lda_set_ensemble(ctx, m, ierr)
  if (ierr /= LDA_ERR_INVALID_DATA) stop 4
  m(5, 2) = 280.0_c_double
  call lda_set_ensemble(ctx, m, ierr)
  if (ierr /= LDA_OK) stop 5
  call lda_set_ensemble(ctx, m(:, 1:0), ierr)
  if (ierr /= LDA_OK) stop 6
  call lda_close(ctx, ierr)
  print '(a)', 'ensemble bindings OK'
end program ensemble_bindings
