package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/jsonfile"
)

// lwWriter appends records the way Papyra's JSON writer does: open with
// O_APPEND, one write of a whole line, close; no lock. Every record carries
// a unique sequence number.
type lwWriter struct {
	path    string
	limit   int64
	written atomic.Int64
	stop    atomic.Bool
	done    chan error
}

func startLWWriter(path string, limit int64) *lwWriter {
	w := &lwWriter{path: path, limit: limit, done: make(chan error, 1)}
	go func() {
		var line []byte
		for !w.stop.Load() {
			seq := w.written.Load()
			if seq >= w.limit {
				time.Sleep(time.Millisecond)
				continue
			}
			line = fmt.Appendf(line[:0], `{"kind": "event", "system_id": "local", "actor_address": "local://worker/%d", "event_type": "ActorStarted", "payload": {"seq": %d, "note": "h\u00e9llo"}, "timestamp": %d.0}`+"\n",
				seq%7, seq, 1795600000+seq)
			f, err := os.OpenFile(w.path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
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
			w.written.Add(1)
		}
		w.done <- nil
	}()
	return w
}

func (w *lwWriter) finish(t *testing.T) int64 {
	t.Helper()
	w.stop.Store(true)
	if err := <-w.done; err != nil {
		t.Fatalf("writer: %v", err)
	}
	return w.written.Load()
}

// lwSeqs returns the sequence numbers in the file, in file order; it fails
// on a line that is not a whole record, except the filler line an in-place
// compaction may leave first (readTarget).
func lwSeqs(t *testing.T, path string) []int64 {
	t.Helper()
	data := readTarget(t, path)
	var seqs []int64
	for i, line := range bytes.SplitAfter(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var rec struct {
			Payload struct {
				Seq *int64 `json:"seq"`
			} `json:"payload"`
		}
		if line[len(line)-1] != '\n' || json.Unmarshal(line, &rec) != nil || rec.Payload.Seq == nil {
			t.Fatalf("line %d is not a whole record: %q", i+1, line)
		}
		seqs = append(seqs, *rec.Payload.Seq)
	}
	return seqs
}

// lwCompactLoop compacts path at least n times while the writer runs; it
// returns the records the reports say were appended during the
// compactions, and how many reports named each method.
func lwCompactLoop(t *testing.T, b *jsonfile.File, w *lwWriter, n int, r backends.Retention) (appended int64, methods map[string]int) {
	t.Helper()
	methods = map[string]int{}
	for i := 0; i < n || w.written.Load() < w.limit/2; i++ {
		rep, err := b.Compact(context.Background(), backends.CompactOptions{
			Retention: r, Now: time.Unix(1795600000, 0), PartialLineGrace: 30 * time.Second,
		})
		if err != nil {
			t.Fatalf("compaction %d: %v", i, err)
		}
		appended += rep.AppendedDuring
		methods[rep.Method]++
		if i > 1000 {
			t.Fatal("the writer made no progress")
		}
	}
	return appended, methods
}

// TestLiveWriterJSONNoLoss: with a Papyra-like writer appending at full
// speed, 50+ compactions that retain everything lose and duplicate nothing.
// The target has method copy: the subject is the rewrite's catch-up and
// drain of what is appended while it copies; with the default method a
// compaction that keeps every record changes nothing.
func TestLiveWriterJSONNoLoss(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	b, err := jsonfile.New(jsonfile.Config{Name: "live", Path: path, StateDir: filepath.Join(dir, "state"),
		Method: backends.MethodCopy})
	if err != nil {
		t.Fatal(err)
	}
	w := startLWWriter(path, 5000)
	appended, _ := lwCompactLoop(t, b, w, 50, backends.Retention{MaxRecords: backends.Int64(1 << 40)})
	total := w.finish(t)
	seqs := lwSeqs(t, path)
	seen := make(map[int64]int, len(seqs))
	for _, s := range seqs {
		seen[s]++
	}
	for s := range total {
		if seen[s] != 1 {
			t.Fatalf("record %d present %d times (%d written, %d lines)", s, seen[s], total, len(seqs))
		}
	}
	if int64(len(seqs)) != total {
		t.Fatalf("%d lines for %d records", len(seqs), total)
	}
	if appended == 0 {
		t.Error("no compaction saw a concurrent append: the test did not exercise the live writer")
	}
	t.Logf("%d records written, %d appended during compactions", total, appended)
	assertNoWatcherFiles(t, dir)
}

// TestLiveWriterJSONCount: with max_records what remains is the newest
// contiguous run of records, in write order, none twice: the write lease on
// the new file during the drain keeps records that reached the old file
// ahead of those written to the new one. It runs with method copy (the
// drain) and with the default method, which cuts the head in place under a
// write lease where the filesystem can (a filler line first in the file is
// accepted: lwSeqs) and rewrites when the writer holds the file open.
func TestLiveWriterJSONCount(t *testing.T) {
	for _, method := range []string{backends.MethodCopy, backends.MethodAuto} {
		t.Run(method, func(t *testing.T) { liveWriterJSONCount(t, method) })
	}
}

func liveWriterJSONCount(t *testing.T, method string) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	b, err := jsonfile.New(jsonfile.Config{Name: "live", Path: path, StateDir: filepath.Join(dir, "state"), Method: method})
	if err != nil {
		t.Fatal(err)
	}
	const keep = 2000
	w := startLWWriter(path, 10000)
	_, methods := lwCompactLoop(t, b, w, 50, backends.Retention{MaxRecords: backends.Int64(keep)})
	total := w.finish(t)
	t.Logf("method %s: compactions by method %v", method, methods)
	if method == backends.MethodAuto && fsx.CanCollapse(dir) && methods[backends.MethodInPlace] == 0 {
		t.Errorf("no compaction ran in place on %s, which can collapse a range (%v): the auto run tests nothing the copy run does not", dir, methods)
	}
	seqs := lwSeqs(t, path)
	if len(seqs) == 0 {
		t.Fatal("nothing left")
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("records out of order or missing at line %d: %d after %d", i+1, seqs[i], seqs[i-1])
		}
	}
	if last := seqs[len(seqs)-1]; last != total-1 {
		t.Fatalf("newest record %d, want %d", last, total-1)
	}
	if len(seqs) < keep {
		t.Fatalf("%d records left, want at least %d", len(seqs), keep)
	}
	assertNoWatcherFiles(t, dir)
}

func assertNoWatcherFiles(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if bytes.Contains([]byte(e.Name()), []byte(".watcher-")) {
			t.Errorf("leftover %s", e.Name())
		}
	}
}
