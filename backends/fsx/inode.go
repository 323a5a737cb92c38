package fsx

import (
	"os"
	"syscall"
)

// SameInode reports whether a and b are the same file.
func SameInode(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b)
}

// InodeOf returns the device and inode numbers of fi.
func InodeOf(fi os.FileInfo) (dev, ino uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev), st.Ino
	}
	return 0, 0
}
