package fsx

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/papyra/watcher/internal/testutil"
)

// TestDirAvailable: Available is statfs's available space of the
// directory's filesystem, and follows what is written there.
func TestDirAvailable(t *testing.T) {
	mnt := testutil.MountTmpfs(t, 8)
	sub := filepath.Join(mnt, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	d := openTestDir(t, sub)
	got, err := d.Available()
	if err != nil {
		t.Fatal(err)
	}
	if want := testutil.Available(t, mnt); got != want || got <= 7<<20 {
		t.Fatalf("Available() = %d, statfs says %d (an empty 8 MiB tmpfs)", got, want)
	}
	if err := os.WriteFile(filepath.Join(mnt, "f"), make([]byte, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	after, err := d.Available()
	if err != nil {
		t.Fatal(err)
	}
	if got-after != 3<<20 {
		t.Fatalf("after writing 3 MiB Available() went from %d to %d", got, after)
	}
	// Through the descriptor: the directory renamed away still answers.
	if err := os.Rename(sub, sub+".moved"); err != nil {
		t.Fatal(err)
	}
	if n, err := d.Available(); err != nil || n != after {
		t.Fatalf("after the directory moved: Available() = %d, %v; want %d", n, err, after)
	}
}

// TestCanCollapse: ext4 and XFS can collapse a range, tmpfs cannot, a
// missing path says no.
func TestCanCollapse(t *testing.T) {
	for _, c := range []struct {
		magic int64
		want  bool
	}{
		{unix.EXT4_SUPER_MAGIC, true},
		{unix.XFS_SUPER_MAGIC, true},
		{unix.TMPFS_MAGIC, false},
		{unix.BTRFS_SUPER_MAGIC, false},
		{unix.NFS_SUPER_MAGIC, false},
		{unix.OVERLAYFS_SUPER_MAGIC, false},
	} {
		if got := collapsible(c.magic); got != c.want {
			t.Errorf("collapsible(%#x) = %v, want %v", c.magic, got, c.want)
		}
	}
	if CanCollapse(filepath.Join(t.TempDir(), "missing", "dir")) {
		t.Error("CanCollapse of a missing path is true")
	}
	if CanCollapse(testutil.MountTmpfs(t, 1)) {
		t.Error("CanCollapse of a tmpfs is true")
	}
	ext4 := testutil.MountExt4(t, 32)
	if !CanCollapse(ext4) {
		t.Error("CanCollapse of an ext4 is false")
	}
	// And Collapse agrees: a block collapsed out of a file there.
	f, err := os.OpenFile(filepath.Join(ext4, "f"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bs, err := CollapseBlock(f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 4*bs)); err != nil {
		t.Fatal(err)
	}
	if err := Collapse(f, bs); err != nil {
		t.Fatalf("CanCollapse says yes, Collapse says %v", err)
	}
}
