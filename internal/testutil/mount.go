package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// MountExt4 makes an ext4 filesystem of sizeMB megabytes in an image file,
// loop-mounts it in a temporary directory and unmounts it when the test
// ends. ext4 supports FALLOC_FL_COLLAPSE_RANGE, so in-place compaction runs
// there. Without root, or where mount or mkfs.ext4 fails (the package
// e2fsprogs), the test is skipped, or fails when CI is set.
func MountExt4(t testing.TB, sizeMB int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "loop-mounting an ext4 image needs root (run the tests as root)")
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		missing(t, "mkfs.ext4 not found (install the package e2fsprogs)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, int64(sizeMB)<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		missing(t, fmt.Sprintf("mkfs.ext4 %s: %v: %s", img, err, out))
	}
	return mount(t, dir, "ext4", "-o", "loop", img)
}

// MountTmpfs mounts a tmpfs of sizeMB megabytes in a temporary directory
// and unmounts it when the test ends. tmpfs cannot collapse a range, so
// in-place compaction falls back to a copy there. Without root the test is
// skipped, or fails when CI is set.
func MountTmpfs(t testing.TB, sizeMB int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "mounting a tmpfs needs root (run the tests as root)")
	}
	return mount(t, t.TempDir(), "tmpfs", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm", sizeMB), "tmpfs")
}

func mount(t testing.TB, dir, what string, args ...string) string {
	t.Helper()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", append(args, mnt)...).CombinedOutput()
	if err != nil {
		missing(t, fmt.Sprintf("mount %s failed (needs root and CAP_SYS_ADMIN): %v: %s", what, err, out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
			exec.Command("umount", "-l", mnt).Run()
		}
	})
	return mnt
}

// FillDisk fills the filesystem at dir with a file until at most leave bytes
// remain available, and returns the file's path (remove it to free the
// space).
func FillDisk(t testing.TB, dir string, leave int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler.bin")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	// Delayed allocation reserves more than writeback then uses: after the
	// sync a little more can be free again, so fill and sync until it is
	// not.
	for range 10 {
		full := false
		for {
			free := Available(t, dir)
			if free <= leave {
				break
			}
			n := min(int64(len(buf)), free-leave)
			if _, err := f.Write(buf[:n]); err != nil {
				full = true // ENOSPC: as full as it gets
				break
			}
		}
		if err := f.Sync(); err != nil {
			t.Logf("sync %s: %v", path, err)
		}
		if full || Available(t, dir) <= leave {
			break
		}
	}
	return path
}

// Available is what statfs says unprivileged users may still write on the
// filesystem at dir.
func Available(t testing.TB, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}
