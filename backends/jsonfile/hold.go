package jsonfile

// Holding the file still, for backup snapshots (package snapshot).

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
)

// HoldFiles implements snapshot.Holder: fn gets the file's directory, held
// open (the one compactions work in), and the file's name in it, or no
// name when the file does not exist (and no directory when that does not
// exist either).
func (j *File) HoldFiles(ctx context.Context, fn func(dir *fsx.Dir, list func() ([]string, error)) error) error {
	path, err := j.resolve()
	if err != nil {
		return err
	}
	files, err := j.openFiles(path, true)
	if errors.Is(err, os.ErrNotExist) {
		return fn(nil, func() ([]string, error) { return nil, nil })
	}
	if err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	defer files.close()
	lock, err := backends.RetryBusy(ctx, files.state.TryLock, files.lock)
	if err != nil {
		return fmt.Errorf("json target %s: %w", j.cfg.Name, err)
	}
	defer lock.Unlock()
	if err := j.recoverLocked(ctx, files); err != nil {
		return err
	}
	return fn(files.dir, func() ([]string, error) {
		if _, err := files.dir.Lstat(files.base); errors.Is(err, os.ErrNotExist) {
			return nil, nil
		} else if err != nil {
			return nil, err
		}
		return []string{files.base}, nil
	})
}
