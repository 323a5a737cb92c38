package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/papyra/watcher/backends"
)

// errLockLost is the cause a compaction is cancelled with when its lock
// expired or was taken over.
var errLockLost = fmt.Errorf("%w: the compaction lock was lost", backends.ErrBusy)

// processID tells this process's locks from those of every other process,
// including earlier processes of the same node: it is drawn once per process.
var processID = func() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go ≥ 1.24)
	return hex.EncodeToString(b[:])
}()

var (
	// takeLock takes the lock with SET NX PX. When ARGV[3] is "1" and the
	// lock already holds our token (left by an interrupted compaction of this
	// process, for example across a Redis restart with an append-only file),
	// it takes it back with PEXPIRE. It returns {1, ""} when taken, {2, ""}
	// when taken back, and {0, value} when someone else holds it.
	takeLock = goredis.NewScript(`if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ''}
end
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] and ARGV[3] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {2, ''}
end
return {0, v}`)
	// renewLock extends the lock only while it still holds our token.
	renewLock = goredis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)
	// releaseLock deletes the lock only while it still holds our token.
	releaseLock = goredis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)
)

// heldHere counts, per lock key, the compactions of this process that hold
// it. All of them write the same token, so a lock holding our token is only
// a leftover to take back when none of them holds that key now. It is keyed
// by the key alone, not by server: a URL may name one server in several ways,
// and the price of two servers sharing a key name is at worst a skip.
var heldHere = struct {
	sync.Mutex
	m map[string]*heldKey
}{m: map[string]*heldKey{}}

// heldKey serialises the acquisitions of one lock key in this process and
// counts its holders.
type heldKey struct {
	mu      sync.Mutex // held across one acquisition
	holders int        // guarded by heldHere's mutex
}

func heldKeyOf(key string) *heldKey {
	heldHere.Lock()
	defer heldHere.Unlock()
	h := heldHere.m[key]
	if h == nil {
		h = &heldKey{}
		heldHere.m[key] = h
	}
	return h
}

// redisLock is a held compaction lock.
type redisLock struct {
	r    *Streams
	held *heldKey
	// takenBack is set when the lock was a leftover of this process that
	// acquire took back.
	takenBack bool
	once      sync.Once
}

// lockToken is the value of this process's locks: "<node>:<process id>".
func (r *Streams) lockToken() string { return r.cfg.Node + ":" + processID }

// lockTTLms is LockTTL in milliseconds, at least 1, for PX and PEXPIRE.
func (r *Streams) lockTTLms() int64 { return max(1, r.cfg.LockTTL.Milliseconds()) }

// acquire takes the lock with SET NX PX, atomically taking back a lock that
// already holds this process's token when no compaction of this process holds
// it (a leftover of an interrupted one). When another holder has it (another
// node, another process of this node, or a running compaction of this
// process on the same key) it returns a nil lock and the holder's node name.
func (r *Streams) acquire(ctx context.Context) (*redisLock, string, error) {
	h := heldKeyOf(r.lockKey)
	h.mu.Lock()
	defer h.mu.Unlock()
	heldHere.Lock()
	takeBack := "0"
	if h.holders == 0 {
		takeBack = "1"
	}
	heldHere.Unlock()

	cctx, cancel := r.cmdCtx(ctx)
	res, err := takeLock.Run(cctx, r.client, []string{r.lockKey}, r.lockToken(), r.lockTTLms(), takeBack).Slice()
	cancel()
	if err != nil {
		return nil, "", r.fail(ctx, "SET NX PX", r.lockKey, err)
	}
	if len(res) != 2 {
		return nil, "", fmt.Errorf("redis target %q: lock %s: unexpected reply %v", r.cfg.Name, r.lockKey, res)
	}
	code, _ := res[0].(int64)
	if code == 0 {
		val, _ := res[1].(string)
		holder := val
		if i := strings.LastIndexByte(val, ':'); i >= 0 {
			holder = val[:i]
		}
		return nil, holder, nil
	}
	heldHere.Lock()
	h.holders++
	heldHere.Unlock()
	return &redisLock{r: r, held: h, takenBack: code == 2}, "", nil
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
		t := time.NewTicker(max(ttl/3, time.Millisecond))
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
			n, err := renewLock.Run(cctx, l.r.client, []string{l.r.lockKey}, l.r.lockToken(), l.r.lockTTLms()).Int64()
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
// context so that a cancelled compaction still releases. When the delete
// fails (Redis is down) the lock stays until its TTL runs out or this
// process takes it back. Calling it again does nothing.
func (l *redisLock) release() error {
	var err error
	l.once.Do(func() {
		defer func() {
			heldHere.Lock()
			l.held.holders--
			heldHere.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), l.r.cfg.CommandTimeout)
		defer cancel()
		if rerr := releaseLock.Run(ctx, l.r.client, []string{l.r.lockKey}, l.r.lockToken()).Err(); rerr != nil {
			err = l.r.fail(ctx, "release lock", l.r.lockKey, rerr)
		}
	})
	return err
}
