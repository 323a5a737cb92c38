package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rlwWriter is a Papyra-style writer whose records carry the real wall-clock
// time: open with O_APPEND, one write of a whole line, close. It remembers
// the write time of every record, by sequence number.
type rlwWriter struct {
	path string
	stop atomic.Bool
	done chan error

	mu    sync.Mutex
	times []float64 // times[seq] is the timestamp of record seq
}

func startRLWWriter(path string, perSecond int) *rlwWriter {
	w := &rlwWriter{path: path, done: make(chan error, 1)}
	go func() {
		tick := time.NewTicker(time.Second / time.Duration(perSecond))
		defer tick.Stop()
		var line []byte
		for seq := int64(0); !w.stop.Load(); seq++ {
			<-tick.C
			now := time.Now()
			ts := float64(now.UnixMicro()) / 1e6
			line = fmt.Appendf(line[:0], `{"kind": "event", "system_id": "local", "actor_address": "local://worker/%d", "event_type": "Tick", "payload": {"seq": %d, "pad": "retention-live-writer-0123456789"}, "timestamp": %.6f}`+"\n",
				seq%11, seq, ts)
			w.mu.Lock()
			w.times = append(w.times, ts)
			w.mu.Unlock()
			f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				w.done <- err
				return
			}
			if _, err := f.Write(line); err != nil {
				f.Close()
				w.done <- err
				return
			}
			if err := f.Close(); err != nil {
				w.done <- err
				return
			}
		}
		w.done <- nil
	}()
	return w
}

func (w *rlwWriter) finish(t *testing.T) {
	t.Helper()
	w.stop.Store(true)
	select {
	case err := <-w.done:
		if err != nil {
			t.Fatalf("writer: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("writer did not stop")
	}
}

// snapshot returns the timestamps of every record written so far.
func (w *rlwWriter) snapshot() []float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]float64(nil), w.times...)
}

// rlwRead reads the file and returns how often each sequence number occurs
// and the smallest timestamp; a final unterminated line (a write in flight)
// and the filler line an in-place compaction may leave first (trimFiller)
// are ignored, any other line that is not one of the writer's records
// fails.
func rlwRead(t *testing.T, path string) (counts map[int64]int, oldest float64, n int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return map[int64]int{}, 0, 0
	}
	if err != nil {
		t.Fatal(err)
	}
	data = trimFiller(t, path, data)
	counts = map[int64]int{}
	lines := bytes.SplitAfter(data, []byte("\n"))
	for i, line := range lines {
		if len(line) == 0 {
			continue
		}
		if line[len(line)-1] != '\n' && i == len(lines)-1 {
			continue
		}
		var rec struct {
			Payload struct {
				Seq *int64 `json:"seq"`
			} `json:"payload"`
			Timestamp float64 `json:"timestamp"`
		}
		if json.Unmarshal(line, &rec) != nil || rec.Payload.Seq == nil {
			t.Fatalf("line %d is not a whole record: %q", i+1, clip(line))
		}
		counts[*rec.Payload.Seq]++
		if n == 0 || rec.Timestamp < oldest {
			oldest = rec.Timestamp
		}
		n++
	}
	return counts, oldest, n
}

// TestRetentionLiveWriterKeepsAgeLimit: a json target with max_age_seconds
// 5, cooldown 1s, no rate limit and the retention trigger as the only
// routine trigger (growth effectively off, timer off), under a Papyra-style
// writer at 200 records/s stamped with the wall clock for 20 s. Every
// sample (every 250 ms) the oldest record on disk is at most limit + 3 s
// old, every record younger than limit − 1 s is present exactly once, and
// the daemon compacts about once per cooldown, not in a tight loop.
func TestRetentionLiveWriterKeepsAgeLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for ~25 s")
	}
	t.Parallel()
	const (
		limit    = 5.0 // max_age_seconds
		slackMax = 3.0 // the oldest record may be this much older than the limit
		keepMin  = 1.0 // records younger than limit − keepMin must be present
		runFor   = 20 * time.Second
		rate     = 200 // records per second
	)
	dir := t.TempDir()
	addr := freeAddr(t)
	path := filepath.Join(dir, "data", "events.ndjson")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, dir, fmt.Sprintf(`
[watcher]
state_dir = %q
http_listen = %q
log_level = "info"

[policy]
cooldown = "1s"
rate = 0
partial_line_grace = "30s"

[triggers.timer]
interval = "0s"

[triggers.growth]
min_bytes = 1099511627776
min_ratio = 1000.0

[triggers.disk]
high_percent = 100
low_percent = 99.9
predict_horizon = "0s"

[triggers.retention]
interval = "1s"
age_slack = "1s"

[[target]]
name = "events"
backend = "json"
path = %q
[target.retention]
max_age_seconds = %g
`, filepath.Join(dir, "state"), addr, path, limit))

	if r := runWatcher(t, 10*time.Second, "validate", "--config", cfg); r.Code != 0 {
		t.Fatalf("validate:\n%s", r)
	} else if strings.Contains(r.Stdout+r.Stderr, "retention cannot be kept") {
		t.Errorf("validate warns on a config that keeps retention:\n%s", r)
	}

	w := startRLWWriter(path, rate)
	defer w.stop.Store(true)
	d := startDaemon(t, cfg, addr)
	d.WaitReady(10 * time.Second)

	start := time.Now()
	var samples, worstAt int
	var worst float64
	for time.Since(start) < runFor {
		time.Sleep(250 * time.Millisecond)
		// The writer's record of what it wrote is taken before the file is
		// read, so every record it lists was written (its close returned or
		// is about to: the newest may still be in flight, and is excused).
		written := w.snapshot()
		now := float64(time.Now().UnixMicro()) / 1e6
		counts, oldest, n := rlwRead(t, path)
		samples++
		if n > 0 {
			if age := now - oldest; age > worst {
				worst, worstAt = age, samples
			}
			if age := now - oldest; age > limit+slackMax {
				t.Errorf("sample %d (%.1fs): oldest record on disk is %.2fs old, want <= %gs", samples, time.Since(start).Seconds(), age, limit+slackMax)
			}
		}
		for seq, c := range counts {
			if c != 1 {
				t.Fatalf("sample %d: record %d present %d times", samples, seq, c)
			}
		}
		for seq := len(written) - 2; seq >= 0; seq-- { // the newest may be in flight
			if now-written[seq] >= limit-keepMin {
				break
			}
			if counts[int64(seq)] != 1 {
				t.Fatalf("sample %d (%.1fs): record %d, %.2fs old (younger than %gs), is lost", samples, time.Since(start).Seconds(), seq, now-written[seq], limit-keepMin)
			}
		}
	}
	w.finish(t)
	elapsed := time.Since(start)

	// At the end: every record of the last limit − 1 s, exactly once.
	written := w.snapshot()
	now := float64(time.Now().UnixMicro()) / 1e6
	counts, _, _ := rlwRead(t, path)
	kept := 0
	for seq := len(written) - 1; seq >= 0 && now-written[seq] < limit-keepMin; seq-- {
		if counts[int64(seq)] != 1 {
			t.Errorf("end: record %d, %.2fs old, present %d times, want once", seq, now-written[seq], counts[int64(seq)])
		}
		kept++
	}
	if kept < rate {
		t.Errorf("end: only %d records younger than %gs: the writer did not keep its pace", kept, limit-keepMin)
	}

	// No tight loop: about one compaction per cooldown at most.
	log := d.Stderr()
	var compactions, retention int
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "msg=compaction") && strings.Contains(line, "target=events") {
			compactions++
			if strings.Contains(line, "trigger=retention") {
				retention++
			}
		}
	}
	maxN := int(elapsed/time.Second) + 5
	t.Logf("%d samples, worst oldest age %.2fs (sample %d), %d compactions (%d retention) in %s, %d records written",
		samples, worst, worstAt, compactions, retention, elapsed.Round(time.Millisecond), len(written))
	if compactions > maxN {
		t.Errorf("%d compactions in %s: a tight loop (want at most %d)", compactions, elapsed.Round(time.Second), maxN)
	}
	if retention == 0 || retention != compactions {
		t.Errorf("%d compactions, %d of them by the retention trigger: want all by it", compactions, retention)
	}
	if strings.Contains(log, "level=ERROR") {
		t.Errorf("the daemon logged errors")
	}
	d.StopClean()
	wantNoLeftovers(t, filepath.Dir(path))
}
