package fsx

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Available returns the bytes an unprivileged process may still write on the
// directory's filesystem (statfs: available blocks times the fragment
// size), through the open directory's descriptor.
func (d *Dir) Available() (int64, error) {
	rc, err := d.f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("directory %s: %w", d.Path, err)
	}
	var st unix.Statfs_t
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = ignoringEINTR(func() error { return unix.Fstatfs(int(fd), &st) })
	}); err != nil {
		return 0, fmt.Errorf("directory %s: %w", d.Path, err)
	}
	if serr != nil {
		return 0, fmt.Errorf("free space on %s: fstatfs: %w", d.Path, serr)
	}
	return availableBytes(&st), nil
}

// availableBytes is st's available space in bytes. Block counts are in
// units of the fragment size (statvfs's f_frsize), which Linux sets to the
// block size where a filesystem has none of its own.
func availableBytes(st *unix.Statfs_t) int64 {
	unit := st.Frsize
	if unit <= 0 {
		unit = st.Bsize
	}
	return int64(st.Bavail) * unit
}

// Filesystem magic numbers (statfs f_type) of the filesystems Collapse
// works on.
const (
	ext4Magic = unix.EXT4_SUPER_MAGIC // also ext2 and ext3
	xfsMagic  = unix.XFS_SUPER_MAGIC
)

// CanCollapse reports whether the filesystem holding path (an existing file
// or directory) is one where Collapse removes a range of a file in place:
// ext4 or XFS. It is a forecast for ordering work, not a promise: a file
// without extents on an ext4 mounted from ext3 still refuses, and Collapse
// then says so (ErrNoCollapse). False where statfs fails.
func CanCollapse(path string) bool {
	var st unix.Statfs_t
	if err := ignoringEINTR(func() error { return unix.Statfs(path, &st) }); err != nil {
		return false
	}
	return collapsible(int64(st.Type))
}

// collapsible reports whether a filesystem of type fsType (statfs f_type)
// supports FALLOC_FL_COLLAPSE_RANGE.
func collapsible(fsType int64) bool {
	return fsType == ext4Magic || fsType == xfsMagic
}
