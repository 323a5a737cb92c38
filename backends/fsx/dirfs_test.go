package fsx

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testutil"
)

// openTestDir opens dir as a Dir, closed at the end of the test.
func openTestDir(t *testing.T, dir string) *Dir {
	t.Helper()
	d, err := OpenDir(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestDirHandleRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	testutil.Mkfifo(t, filepath.Join(dir, "fifo"))
	t.Cleanup(func() { testutil.UnblockFIFO(filepath.Join(dir, "fifo")) })
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d := openTestDir(t, dir)
	cases := []struct{ name, what string }{
		{"fifo", "FIFO"},
		{"sub", "directory"},
		{"sock", "socket"},
	}
	flags := []int{os.O_RDONLY, os.O_WRONLY, os.O_RDWR | os.O_APPEND, os.O_RDWR | os.O_CREATE}
	for _, c := range cases {
		for _, flag := range flags {
			testutil.Within(t, 5*time.Second, "open of "+c.name, func() {
				f, fi, err := d.OpenRegular(c.name, flag, 0o644)
				if f != nil || fi != nil {
					f.Close()
					t.Errorf("%s flag %#x: opened", c.name, flag)
					return
				}
				if !errors.Is(err, backends.ErrNotRegular) || !strings.Contains(err.Error(), c.what) || !strings.Contains(err.Error(), filepath.Join(dir, c.name)) {
					t.Errorf("%s flag %#x: got %v, want ErrNotRegular naming the path and %q", c.name, flag, err, c.what)
				}
			})
		}
	}
	// A device, through /dev itself.
	dev := openTestDir(t, "/dev")
	testutil.Within(t, 5*time.Second, "open of /dev/null", func() {
		if _, _, err := dev.OpenRegular("null", os.O_RDONLY, 0); !errors.Is(err, backends.ErrNotRegular) || !strings.Contains(err.Error(), "character device") {
			t.Errorf("/dev/null: got %v, want ErrNotRegular naming a character device", err)
		}
	})
}

// TestDirHandleRefusesRacingFIFO: a FIFO that replaces a regular file
// between OpenRegular's check and its open is refused by the open itself
// (O_NONBLOCK, fstat), not waited on.
func TestDirHandleRefusesRacingFIFO(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	t.Cleanup(func() { testutil.UnblockFIFO(p) })
	d := openTestDir(t, dir)
	openRegularHook = func(path string) {
		if path == p {
			os.Remove(p)
			testutil.Mkfifo(t, p)
		}
	}
	defer func() { openRegularHook = nil }()
	for _, flag := range []int{os.O_RDONLY, os.O_WRONLY | os.O_APPEND, os.O_RDWR} {
		os.Remove(p)
		os.WriteFile(p, []byte("x\n"), 0o644)
		testutil.Within(t, 5*time.Second, "open of a FIFO swapped in", func() {
			f, _, err := d.OpenRegular("f", flag, 0)
			if f != nil {
				f.Close()
			}
			if !errors.Is(err, backends.ErrNotRegular) || !strings.Contains(err.Error(), "FIFO") {
				t.Errorf("flag %#x: got %v, want ErrNotRegular naming a FIFO", flag, err)
			}
		})
	}
}

func TestDirHandleRefusesSymlinks(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "real"), []byte("x\n"), 0o644)
	os.Symlink("real", filepath.Join(dir, "link"))
	os.Symlink("/dev/null", filepath.Join(dir, "null"))
	os.Symlink("missing", filepath.Join(dir, "dangling"))
	d := openTestDir(t, dir)
	for _, name := range []string{"link", "null", "dangling"} {
		for _, flag := range []int{os.O_RDONLY, os.O_RDWR | os.O_CREATE} {
			f, _, err := d.OpenRegular(name, flag, 0o644)
			if f != nil {
				f.Close()
			}
			if !errors.Is(err, backends.ErrSymlink) {
				t.Errorf("%s flag %#x: got %v, want ErrSymlink", name, flag, err)
			}
		}
		if _, err := d.Create(name, nil); !errors.Is(err, fs.ErrExist) {
			t.Errorf("create over link %s: got %v, want ErrExist", name, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "real")); string(b) != "x\n" {
		t.Errorf("the link's target changed: %q", b)
	}
	if _, err := os.Lstat(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("created through a dangling link: %v", err)
	}
	fi, err := d.Lstat("link")
	if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("lstat link: %v %v", fi, err)
	}
	if fi, err := d.Stat("link"); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("stat link: %v %v", fi, err)
	}
	// The directory itself.
	other := t.TempDir()
	os.Symlink(dir, filepath.Join(other, "dirlink"))
	if _, err := OpenDir(filepath.Join(other, "dirlink"), false); !errors.Is(err, backends.ErrSymlink) {
		t.Errorf("OpenDir of a link: got %v, want ErrSymlink", err)
	}
	if dd, err := OpenDir(filepath.Join(other, "dirlink"), true); err != nil {
		t.Errorf("OpenDir of a link with follow: %v", err)
	} else {
		dd.Close()
	}
	os.Symlink(dir, filepath.Join(dir, "self"))
	if _, err := d.OpenSubdir("self"); !errors.Is(err, backends.ErrSymlink) {
		t.Errorf("OpenSubdir of a link: got %v, want ErrSymlink", err)
	}
	if _, err := d.OpenSubdir("real"); !errors.Is(err, unix.ENOTDIR) || !strings.Contains(err.Error(), "regular file") {
		t.Errorf("OpenSubdir of a file: got %v, want ENOTDIR naming a regular file", err)
	}
}

func TestDirHandleOpenRegular(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("abc\n"), 0o640)
	d := openTestDir(t, dir)
	f, fi, err := d.OpenRegular("f", os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK != 0 {
		t.Errorf("O_NONBLOCK still set (flags %#x, %v)", fl, err)
	}
	if f.Name() != filepath.Join(dir, "f") || fi.Size() != 4 || fi.Name() != "f" {
		t.Errorf("name %s, info %v %d", f.Name(), fi.Name(), fi.Size())
	}
	if _, err := f.Write([]byte("d\n")); err != nil {
		t.Fatal(err)
	}
	osfi, _ := os.Stat(filepath.Join(dir, "f"))
	if lfi, err := d.Lstat("f"); err != nil || !os.SameFile(lfi, osfi) || !os.SameFile(fi, lfi) {
		t.Errorf("lstat: not the same file (%v)", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "f")); string(b) != "abc\nd\n" {
		t.Errorf("content %q", b)
	}
	if _, _, err := d.OpenRegular("missing", os.O_RDONLY, 0); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), filepath.Join(dir, "missing")) {
		t.Errorf("missing: %v", err)
	}
	for _, bad := range []string{"", ".", "..", "../f", "a/b", "/etc/passwd"} {
		if _, _, err := d.OpenRegular(bad, os.O_RDONLY, 0); err == nil || !strings.Contains(err.Error(), "single path component") {
			t.Errorf("name %q: got %v", bad, err)
		}
	}
}

func TestDirHandleCreateTempLike(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o600)
	os.Chmod(filepath.Join(dir, "f"), 0o611)
	like, _ := os.Stat(filepath.Join(dir, "f"))
	d := openTestDir(t, dir)
	f, name, err := d.CreateTemp("f", like)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if !strings.HasPrefix(name, TempPrefix("f")) || f.Name() != filepath.Join(dir, name) {
		t.Errorf("temp name %q (%s)", name, f.Name())
	}
	fi, err := os.Lstat(filepath.Join(dir, name))
	if err != nil || fi.Mode() != 0o611 {
		t.Errorf("temp mode %v (%v), want 0611", fi.Mode(), err)
	}
	if err := d.RemoveTemps("f"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temp file left: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "f")); err != nil {
		t.Errorf("RemoveTemps removed f: %v", err)
	}
}

// TestDirHandleFollowsTheDirectory: once open, a handle works in its
// directory even after the directory was renamed away and its name made a
// link to another directory.
func TestDirHandleFollowsTheDirectory(t *testing.T) {
	base := t.TempDir()
	data, away, victim := filepath.Join(base, "data"), filepath.Join(base, "away"), filepath.Join(base, "victim")
	os.Mkdir(data, 0o755)
	os.Mkdir(victim, 0o755)
	os.WriteFile(filepath.Join(data, "a"), []byte("a\n"), 0o644)
	os.WriteFile(filepath.Join(victim, "a"), []byte("victim\n"), 0o644)
	d := openTestDir(t, data)
	if err := os.Rename(data, away); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("victim", data); err != nil {
		t.Fatal(err)
	}
	f, _, err := d.OpenRegular("a", os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 10)
	n, _ := f.Read(b)
	f.Close()
	if string(b[:n]) != "a\n" {
		t.Errorf("read %q through the handle, want the original directory's", b[:n])
	}
	if err := d.Link("a", "b"); err != nil {
		t.Fatal(err)
	}
	if err := d.Rename("b", "c"); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteJSON("j", map[string]int{"x": 1}); err != nil {
		t.Fatal(err)
	}
	var v map[string]int
	if found, err := d.ReadJSON("j", &v); !found || err != nil || v["x"] != 1 {
		t.Errorf("ReadJSON: %v %v %v", found, err, v)
	}
	sub, sname, err := d.mkdirTemp(".stg-")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.LinkTo("a", sub, "old"); err != nil {
		t.Fatal(err)
	}
	tf, tname, err := sub.CreateTemp("a", nil)
	if err != nil {
		t.Fatal(err)
	}
	tf.Close()
	if err := sub.RenameTo(tname, d, "new"); err != nil {
		t.Fatal(err)
	}
	if err := sub.Sync(); err != nil {
		t.Fatal(err)
	}
	sub.Close()
	lk, err := d.TryLock("lock")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.TryLock("lock"); !errors.Is(err, backends.ErrBusy) {
		t.Errorf("second lock: got %v, want ErrBusy", err)
	}
	lk.Unlock()
	if err := d.RemoveAll(sname); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	entries, err := d.ReadDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		got[e.Name()] = true
	}
	if len(got) != 5 || !got["a"] || !got["c"] || !got["j"] || !got["new"] || !got["lock"] {
		t.Errorf("entries %v", got)
	}
	ventries, _ := os.ReadDir(victim)
	if len(ventries) != 1 || ventries[0].Name() != "a" {
		t.Errorf("victim directory touched: %v", ventries)
	}
	if b, _ := os.ReadFile(filepath.Join(victim, "a")); string(b) != "victim\n" {
		t.Errorf("victim file changed: %q", b)
	}
}

func TestDirHandleRemoveAllKeepsLinkTargets(t *testing.T) {
	dir, victim := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(victim, "v"), []byte("v"), 0o644)
	os.Mkdir(filepath.Join(dir, "stg"), 0o700)
	os.Mkdir(filepath.Join(dir, "stg", "deeper"), 0o700)
	os.WriteFile(filepath.Join(dir, "stg", "deeper", "f"), nil, 0o644)
	os.Symlink(victim, filepath.Join(dir, "stg", "link"))
	os.Symlink(victim, filepath.Join(dir, "dirlink"))
	d := openTestDir(t, dir)
	if err := d.RemoveAll("stg"); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveAll("dirlink"); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveAll("missing"); err != nil {
		t.Errorf("missing: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left %v", entries)
	}
	if _, err := os.Stat(filepath.Join(victim, "v")); err != nil {
		t.Errorf("link target removed: %v", err)
	}
}

func TestDirHandleStateFilesRefuseFIFO(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"j", "lock"} {
		testutil.Mkfifo(t, filepath.Join(dir, n))
		t.Cleanup(func() { testutil.UnblockFIFO(filepath.Join(dir, n)) })
	}
	d := openTestDir(t, dir)
	testutil.Within(t, 5*time.Second, "ReadJSON of a FIFO", func() {
		var v any
		if _, err := d.ReadJSON("j", &v); !errors.Is(err, backends.ErrNotRegular) {
			t.Errorf("ReadJSON: got %v, want ErrNotRegular", err)
		}
	})
	testutil.Within(t, 5*time.Second, "TryLock of a FIFO", func() {
		if _, err := d.TryLock("lock"); !errors.Is(err, backends.ErrNotRegular) {
			t.Errorf("TryLock: got %v, want ErrNotRegular", err)
		}
	})
	// WriteFileReplace replaces the name, FIFO or not, without opening it.
	if err := d.WriteFileReplace("j", []byte("{}\n"), true); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "j")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("after writeFileReplace: %v %v", fi, err)
	}
	if err := d.RemoveDurably("j"); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveDurably("j"); err != nil {
		t.Errorf("RemoveDurably of a missing name: %v", err)
	}
}
