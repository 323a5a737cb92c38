package backends

// Shared helpers for crash-safe state in the state directory: small JSON
// files written atomically (temp file, fsync, rename, fsync directory), and
// an advisory lock per target so that two watcher processes sharing a state
// directory never work on one target at once.

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// stateName returns a file name for a target's state in the state
// directory: readable (kind and target name) and unique (a hash of path).
func stateName(kind, name, path, suffix string) string {
	h := fnv.New64a()
	h.Write([]byte(path))
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, name)
	if len(clean) > 64 {
		clean = clean[:64]
	}
	return fmt.Sprintf("%s-%s-%016x%s", kind, clean, h.Sum64(), suffix)
}

// writeFileAtomic replaces path with data durably: a temporary file in the
// same directory, fsync, rename, fsync of the directory.
func writeFileAtomic(path string, data []byte) error {
	return writeFileReplace(path, data, true)
}

// writeFileReplace replaces path with data through a temporary file and a
// rename; with durable it fsyncs the file and the directory too. Without,
// the new content survives the process being killed but not necessarily a
// power loss.
func writeFileReplace(path string, data []byte, durable bool) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := createTemp(dir, base, nil)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		removeFile(f)
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if durable {
		if err := f.Sync(); err != nil {
			removeFile(f)
			return fmt.Errorf("sync %s: %w", f.Name(), err)
		}
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("close %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("rename %s to %s: %w", f.Name(), path, err)
	}
	if !durable {
		return nil
	}
	return syncDir(dir)
}

// writeJSONAtomic writes v as JSON to path with writeFileAtomic.
func writeJSONAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return writeFileAtomic(path, append(data, '\n'))
}

// readJSONFile decodes path into v. It reports found=false when path does
// not exist.
func readJSONFile(path string, v any) (found bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return true, fmt.Errorf("decode journal %s: %w", path, err)
	}
	return true, nil
}

// removeDurably removes path (missing is fine) and fsyncs its directory.
func removeDurably(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

// fileLock is an exclusive advisory lock (flock) on a file in the state
// directory.
type fileLock struct{ f *os.File }

// tryLock takes the lock at path without waiting; it returns an error
// wrapping ErrBusy when someone else holds it. The state directory is
// created if missing.
func tryLock(path string) (*fileLock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory %s: %w", filepath.Dir(path), err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", path, ErrBusy)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &fileLock{f: f}, nil
}

// unlock releases the lock.
func (l *fileLock) unlock() {
	if l != nil && l.f != nil {
		unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
		l.f.Close()
		l.f = nil
	}
}
