#!/usr/bin/env bash
# silence_check.sh EXE NP STOPPED MPIEXEC [MPIEXEC FLAGS...]: runs mpi_silence_test on NP ranks
# with rank STOPPED stopped by SIGSTOP, and checks that every other rank caught the loss and had a
# second run refused (right or WRONG, as each rank prints), that the job was aborted (mpirun exits non-zero, within the timeout), and that
# no process of it is left (the stopped rank and its replicas included).
set -u
exe=$1 np=$2 stopped=$3 mpiexec=$4
shift 4
# The job's processes: the ranks and their replicas (command lines starting with the executable).
fail() {
  echo "silence_check: $*" >&2
  pkill -KILL -f "^$exe" 2>/dev/null
  exit 1
}
out=$(timeout -k 5 90 "$mpiexec" -n "$np" "$@" "$exe" "$stopped" 2>&1)
rc=$?
echo "$out"
[ $rc -ne 124 ] && [ $rc -ne 137 ] || fail "mpirun did not end within 90 s"
[ $rc -ne 0 ] || fail "mpirun exited 0: the job was not aborted"
for ((r = 0; r < np; ++r)); do
  # The stopped rank may run on (Open MPI sends SIGCONT before it kills) and see the others gone.
  [ $r -eq "$stopped" ] && continue
  ! grep -q "silence_test: rank $r: WRONG" <<<"$out" || fail "rank $r saw the wrong outcome (above)"
  grep -q "silence_test: rank $r: caught" <<<"$out" || fail "rank $r did not report the lost rank"
  grep -q "silence_test: rank $r: second run refused" <<<"$out" || fail "rank $r ran again after a lost rank"
done
grep -q "procflow::mpi: aborting the MPI job" <<<"$out" || fail "no rank aborted the job"
sleep 1
if pgrep -f "^$exe" >/dev/null; then
  pgrep -af "^$exe" >&2
  fail "processes of the job are left"
fi
echo "silence_check: rank $stopped stopped on $np ranks: found, reported, job aborted, nothing left"
