package backends

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// errLockLost is the cause a compaction is cancelled with when its lock
// expired or was taken over.
var errLockLost = fmt.Errorf("%w: the compaction lock was lost", ErrBusy)

var (
	// renewLock extends the lock only while it still holds our token.
	renewLock = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)
	// releaseLock deletes the lock only while it still holds our token.
	releaseLock = redis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)
)

// redisLock is a held compaction lock.
type redisLock struct {
	r     *Redis
	token string
}

// acquire takes the lock with SET NX PX. When another holder has it, it
// returns a nil lock and the holder's node name.
func (r *Redis) acquire(ctx context.Context) (*redisLock, string, error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, "", fmt.Errorf("redis target %q: lock token: %w", r.cfg.Name, err)
	}
	token := r.cfg.Node + ":" + hex.EncodeToString(rnd[:])
	for range 3 {
		cctx, cancel := r.cmdCtx(ctx)
		ok, err := r.client.SetNX(cctx, r.lockKey, token, r.cfg.LockTTL).Result()
		cancel()
		if err != nil {
			return nil, "", r.fail(ctx, "SET NX", r.lockKey, err)
		}
		if ok {
			return &redisLock{r: r, token: token}, "", nil
		}
		cctx, cancel = r.cmdCtx(ctx)
		val, err := r.client.Get(cctx, r.lockKey).Result()
		cancel()
		if errors.Is(err, redis.Nil) {
			continue // expired in between: try again
		}
		if err != nil {
			return nil, "", r.fail(ctx, "GET", r.lockKey, err)
		}
		holder := val
		if i := strings.LastIndexByte(val, ':'); i >= 0 {
			holder = val[:i]
		}
		return nil, holder, nil
	}
	return nil, "", fmt.Errorf("redis target %q: lock %s: %w: it changed hands repeatedly", r.cfg.Name, r.lockKey, ErrBusy)
}

// keep renews the lock every LockTTL/3 until the returned stop is called.
// When the lock is lost (someone else holds it, or it could not be renewed
// before it expired) it calls cancel with errLockLost.
func (l *redisLock) keep(ctx context.Context, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ttl := l.r.cfg.LockTTL
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		lastOK := time.Now()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			cctx, ccancel := l.r.cmdCtx(ctx)
			n, err := renewLock.Run(cctx, l.r.client, []string{l.r.lockKey}, l.token, ttl.Milliseconds()).Int64()
			ccancel()
			switch {
			case err == nil && n == 1:
				lastOK = time.Now()
			case err == nil:
				cancel(errLockLost)
				return
			case time.Since(lastOK) >= ttl:
				cancel(errLockLost)
				return
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// release deletes the lock if it still holds our token. It uses its own
// context so that a cancelled compaction still releases.
func (l *redisLock) release() error {
	ctx, cancel := context.WithTimeout(context.Background(), l.r.cfg.CommandTimeout)
	defer cancel()
	if err := releaseLock.Run(ctx, l.r.client, []string{l.r.lockKey}, l.token).Err(); err != nil {
		return l.r.fail(ctx, "release lock", l.r.lockKey, err)
	}
	return nil
}
