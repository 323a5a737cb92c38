package fsx

// Names of the state a target keeps in the state directory, and the
// advisory lock per target (taken through Dir.TryLock) so that two
// watcher processes sharing a state directory never work on one target at
// once.

import (
	"fmt"
	"hash/fnv"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// StateName returns a file name for a target's state in the state
// directory: readable (kind and target name) and unique (a hash of path).
func StateName(kind, name, path, suffix string) string {
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

// fileLock is an exclusive advisory lock (flock) on a file in the state
// directory.
type fileLock struct{ f *os.File }

// Unlock releases the lock.
func (l *fileLock) Unlock() {
	if l != nil && l.f != nil {
		unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
		l.f.Close()
		l.f = nil
	}
}
