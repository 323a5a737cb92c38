package fsx

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ErrNoCollapse is returned by Collapse where the filesystem cannot remove a
// range from a file in place (tmpfs, btrfs, NFS, overlayfs), or the range is
// not one it accepts. Nothing was changed.
var ErrNoCollapse = errors.New("the filesystem cannot collapse a range of this file in place")

// CollapseBlock returns the granularity of Collapse on f's filesystem: its
// block size. Ranges must start and end at multiples of it.
func CollapseBlock(f *os.File) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return 0, &os.PathError{Op: "fstatfs", Path: f.Name(), Err: err}
	}
	if st.Bsize <= 0 {
		return 0, fmt.Errorf("%s: filesystem block size %d: %w", f.Name(), st.Bsize, ErrNoCollapse)
	}
	return int64(st.Bsize), nil
}

// Collapse removes the first n bytes of f in place
// (fallocate(FALLOC_FL_COLLAPSE_RANGE)): what followed them moves to offset
// 0 and the file shrinks by n, without copying data and without needing
// free space. n must be a multiple of CollapseBlock and less than the
// file's size. Where the filesystem cannot do it, the error wraps
// ErrNoCollapse and the file is unchanged.
func Collapse(f *os.File, n int64) error { return CollapseAt(f, 0, n) }

// CollapseAt removes the n bytes of f at off in place, as Collapse does at
// offset 0; off must be a multiple of CollapseBlock too.
func CollapseAt(f *os.File, off, n int64) error {
	if n == 0 {
		return nil
	}
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, off, n)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EINVAL):
		return fmt.Errorf("collapse %d bytes at %d of %s: %w (%w)", n, off, f.Name(), ErrNoCollapse, err)
	}
	return &os.PathError{Op: "collapse", Path: f.Name(), Err: err}
}

// NextHole returns the first hole (a range with no blocks allocated, which
// reads as zeros) of f at or after from and before its end, as [start,
// end). ok is false when there is none, or the filesystem cannot tell
// (lseek SEEK_HOLE/SEEK_DATA unsupported).
func NextHole(f *os.File, from int64) (start, end int64, ok bool) {
	fd := int(f.Fd())
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, false
	}
	size := fi.Size()
	start, err = unix.Seek(fd, from, unix.SEEK_HOLE)
	if err != nil || start >= size {
		return 0, 0, false
	}
	end, err = unix.Seek(fd, start, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		end, err = size, nil // a hole up to the end
	}
	if err != nil {
		return 0, 0, false
	}
	return start, end, true
}
