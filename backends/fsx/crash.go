package fsx

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// ErrSimulatedCrash wraps every error a crash hook returns through
// CrashPoint, so that code and tests can tell a simulated crash from a real
// failure.
var ErrSimulatedCrash = errors.New("simulated crash")

var crashHook atomic.Pointer[func(point string) error]

// SetCrashHook installs h (tests only) and returns a function that puts the
// previous hook back. A nil h removes the hook. While a hook is installed,
// every CrashPoint calls it with the name of the point.
func SetCrashHook(h func(point string) error) (restore func()) {
	var p *func(string) error
	if h != nil {
		p = &h
	}
	old := crashHook.Swap(p)
	return func() { crashHook.Store(old) }
}

// CrashPoint marks a named point of a compaction or recovery. Without a hook
// it returns nil. When the hook returns an error, CrashPoint returns it
// wrapped in ErrSimulatedCrash: the caller must stop right there and clean
// nothing up, as if the process had been killed (its file descriptors and
// locks are released, as the kernel would).
func CrashPoint(point string) error {
	h := crashHook.Load()
	if h == nil {
		return nil
	}
	if err := (*h)(point); err != nil {
		return fmt.Errorf("%w: %w", ErrSimulatedCrash, err)
	}
	return nil
}
