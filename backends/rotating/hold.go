package rotating

// Holding the set still, for backup snapshots (package snapshot).

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
)

// HoldFiles implements snapshot.Holder: fn gets the set's directory, held
// open (the one compactions work in), and the names in it of the existing
// files of the set, oldest first (no directory when it does not exist). A
// set with max_files = 1 is refused: Papyra's writer
// truncates its only file in place when it is full, which no link can
// protect.
func (r *Set) HoldFiles(ctx context.Context, fn func(dir *fsx.Dir, list func() ([]string, error)) error) error {
	if r.cfg.MaxFiles <= 1 {
		return fmt.Errorf("rotating target %q: max_files = 1: the writer truncates its only file in place, so a snapshot cannot be consistent", r.cfg.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	path, err := r.resolve()
	if err != nil {
		return err
	}
	ds, err := r.openSetDir(path)
	if errors.Is(err, os.ErrNotExist) {
		return fn(nil, func() ([]string, error) { return nil, nil })
	}
	if err != nil {
		return err
	}
	defer ds.close()
	if ds.state, err = fsx.OpenStateDir(r.cfg.StateDir); err != nil {
		return err
	}
	lock, err := backends.RetryBusy(ctx, ds.state.TryLock, r.lockName(path))
	if err != nil {
		return err
	}
	defer lock.Unlock()
	if err := r.recoverLocked(ctx, ds); err != nil {
		return err
	}
	return fn(ds.dir, func() ([]string, error) {
		var names []string
		for i := r.cfg.MaxFiles - 1; i >= 0; i-- {
			name := segName(ds.base, i)
			if _, err := ds.dir.Lstat(name); errors.Is(err, os.ErrNotExist) {
				continue
			} else if err != nil {
				return nil, err
			}
			names = append(names, name)
		}
		return names, nil
	})
}
