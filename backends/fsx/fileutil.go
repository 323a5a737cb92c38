package fsx

import (
	"fmt"
	"os"

	"github.com/papyra/watcher/backends"
)

// TempMarker is in the name of every temporary file the watcher creates, so
// that leftovers from a crash can be recognised and removed, and nothing else
// ever is.
const TempMarker = ".watcher-tmp-"

// TempPrefix is the name prefix of the temporary files for the file base.
func TempPrefix(base string) string { return "." + base + TempMarker }

// CheckPath refuses a path that is a symbolic link unless follow is set.
// A missing path is fine (an empty target).
func CheckPath(path string, follow bool) error {
	fi, err := os.Lstat(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSymlink != 0 && !follow {
		return fmt.Errorf("%s: %w (set follow_symlinks = true to allow it)", path, backends.ErrSymlink)
	}
	return nil
}
