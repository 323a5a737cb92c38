package testutil

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Within runs fn and fails the test when it has not returned after limit
// (a blocked open); the goroutine is left behind then.
func Within(t *testing.T, limit time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("%s still blocked after %s", what, limit)
	}
}

// Mkfifo makes a FIFO at path; the test fails if it cannot.
func Mkfifo(t *testing.T, path string) {
	t.Helper()
	if err := unix.Mkfifo(path, 0o644); err != nil {
		t.Fatalf("mkfifo %s: %v", path, err)
	}
}

// UnblockFIFO opens path for writing and reading without waiting, so that a
// reader or writer blocked in open(2) on it (the old code) gets going again
// when the test ends.
func UnblockFIFO(path string) {
	if fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK, 0); err == nil {
		unix.Close(fd)
	}
}
