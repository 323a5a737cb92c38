package fsx

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// TakeLease puts a write lease on f: until it is released, any other open
// of the file waits in the kernel (up to /proc/sys/fs/lease-break-time).
// It reports false where leases are not available.
func TakeLease(f *os.File) bool {
	if _, err := unix.FcntlInt(f.Fd(), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		return false
	}
	// No SIGIO on a lease break: the drain polls F_GETLEASE instead.
	unix.FcntlInt(f.Fd(), unix.F_SETOWN, 0)
	return true
}

// LeaseWanted reports whether someone waits to open f for writing.
func LeaseWanted(f *os.File) bool {
	v, err := unix.FcntlInt(f.Fd(), unix.F_GETLEASE, 0)
	return err == nil && v == unix.F_UNLCK
}

// WritersGone reports whether no writer can add to old any more (done),
// and whether that could be told at all (known). old is a file nobody can
// open by name any more (it was renamed over); newf, when leased, is the
// file that took its name, under this process's write lease. Known from
// the kernel: nobody has old open for writing (a read lease can be taken
// on it). Where that cannot be told (NFS; no CAP_LEASE and not the owner):
// a writer waits on newf's lease, so it is done with old (Papyra opens,
// writes and closes per record). Otherwise nothing is known.
func WritersGone(old, newf *os.File, leased bool) (done, known bool) {
	if present, ok := OpenForWriting(old); ok {
		return !present, true
	}
	if leased && LeaseWanted(newf) {
		return true, true
	}
	return false, false
}

// OpenForWriting reports whether some process has f's file open for
// writing (present), by trying to take a read lease on f, which must be
// open read-only; the lease is released at once. known is false where
// leases are not available (NFS, a process without CAP_LEASE that does not
// own the file): then nothing can be told.
func OpenForWriting(f *os.File) (present, known bool) {
	_, err := unix.FcntlInt(f.Fd(), unix.F_SETLEASE, unix.F_RDLCK)
	switch {
	case err == nil:
		unix.FcntlInt(f.Fd(), unix.F_SETOWN, 0)
		ReleaseLease(f)
		return false, true
	case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EBUSY):
		return true, true
	}
	return false, false
}

// ReleaseLease releases a lease taken on f.
func ReleaseLease(f *os.File) {
	unix.FcntlInt(f.Fd(), unix.F_SETLEASE, unix.F_UNLCK)
}

// TakeLeaseRetry tries to take a write lease on f (TakeLease) up to tries
// times, wait apart: a writer that opens the file for each record holds it
// open only briefly. It reports whether the lease is held.
func TakeLeaseRetry(f *os.File, tries int, wait time.Duration) bool {
	for i := 0; ; i++ {
		if TakeLease(f) {
			return true
		}
		if i+1 >= tries {
			return false
		}
		time.Sleep(wait)
	}
}
