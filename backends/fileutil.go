package backends

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// tempMarker is in the name of every temporary file the watcher creates, so
// that leftovers from a crash can be recognised and removed, and nothing else
// ever is.
const tempMarker = ".watcher-tmp-"

// tempPrefix is the name prefix of the temporary files for the file base.
func tempPrefix(base string) string { return "." + base + tempMarker }

// createTemp creates a new, empty temporary file in dir for the file named
// base, with O_EXCL (never through an existing name or link), and with the
// mode and owner of like when like is not nil.
func createTemp(dir, base string, like os.FileInfo) (*os.File, error) {
	mode := os.FileMode(0o644)
	if like != nil {
		mode = like.Mode().Perm()
	}
	for range 10 {
		var rnd [8]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, err
		}
		name := filepath.Join(dir, tempPrefix(base)+hex.EncodeToString(rnd[:]))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, mode)
		if os.IsExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("create temporary file in %s: %w", dir, err)
		}
		if like != nil {
			// umask may have narrowed the mode; set it exactly.
			if err := f.Chmod(mode); err != nil {
				removeFile(f)
				return nil, fmt.Errorf("set mode of %s: %w", name, err)
			}
			if st, ok := like.Sys().(*syscall.Stat_t); ok {
				if err := f.Chown(int(st.Uid), int(st.Gid)); err != nil && !os.IsPermission(err) {
					removeFile(f)
					return nil, fmt.Errorf("set owner of %s: %w", name, err)
				}
			}
		}
		return f, nil
	}
	return nil, fmt.Errorf("create temporary file in %s: too many name collisions", dir)
}

// removeFile closes f and removes it, for cleaning up a temporary file on an
// error path.
func removeFile(f *os.File) {
	f.Close()
	os.Remove(f.Name())
}

// syncDir fsyncs a directory so that renames and creations in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// removeTempLeftovers removes the temporary files that a crashed compaction
// of the file base left in dir. It removes nothing else.
func removeTempLeftovers(dir, base string) error {
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	prefix := tempPrefix(base)
	for _, e := range entries {
		if e.Type().IsRegular() && strings.HasPrefix(e.Name(), prefix) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !os.IsNotExist(err) {
				return fmt.Errorf("remove leftover %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}

// checkPath refuses a path that is a symbolic link unless follow is set.
// A missing path is fine (an empty target).
func checkPath(path string, follow bool) error {
	fi, err := os.Lstat(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSymlink != 0 && !follow {
		return fmt.Errorf("%s: %w (set follow_symlinks = true to allow it)", path, ErrSymlink)
	}
	return nil
}
