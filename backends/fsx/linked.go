package fsx

import (
	"fmt"
	"os"
	"syscall"

	"github.com/papyra/watcher/backends"
)

// RefuseLinked returns backends.ErrLinked when f has more than one link:
// the guard of every write into an existing file at an offset (not an
// append), since a backup snapshot (hard links) may hold the file.
func RefuseLinked(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
		return fmt.Errorf("%s: %w", f.Name(), backends.ErrLinked)
	}
	return nil
}
