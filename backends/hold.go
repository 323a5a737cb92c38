package backends

// What the file backends share for backup snapshots (package snapshot,
// whose Holder they implement).

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrLinked is returned when a compaction step would write into an existing
// file in place while that file has more than one link: a backup snapshot
// (hard links) may hold it, and its bytes must never change.
var ErrLinked = errors.New("file has more than one link (a backup snapshot may hold it); not written in place")

// holdRetry is how often HoldFiles tries again for the lock a compaction
// holds.
const holdRetry = 20 * time.Millisecond

// RetryBusy calls take(arg) (a file backend taking its compaction lock,
// for snapshot.Holder's HoldFiles) until it does not return ErrBusy or ctx
// is done.
func RetryBusy[A, T any](ctx context.Context, take func(A) (T, error), arg A) (T, error) {
	for {
		v, err := take(arg)
		if !errors.Is(err, ErrBusy) {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("%w (waited for the running compaction: %w)", err, ctx.Err())
		case <-time.After(holdRetry):
		}
	}
}
