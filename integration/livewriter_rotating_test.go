package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/rotating"
)

// rotLiveWriter appends records with sequence numbers exactly as Papyra's
// RotatingFilePersistence does: before each record, if the active file would
// pass maxBytes, rotate (shift .i → .i+1 from the oldest down, active → .1),
// unless <path>.<maxFiles-1> exists; then open in append mode, write the
// line, close. No lock.
type rotLiveWriter struct {
	path      string
	maxBytes  int64
	maxFiles  int
	seq       atomic.Int64 // last sequence number written
	rotations atomic.Int64
}

func (w *rotLiveWriter) seg(i int) string {
	if i == 0 {
		return w.path
	}
	return w.path + "." + strconv.Itoa(i)
}

func (w *rotLiveWriter) write(seq int64) error {
	line := fmt.Sprintf(`{"kind":"event","system_id":"live","actor_address":"a","event_type":"tick","payload":{"seq":%d},"timestamp":%d.5}`+"\n",
		seq, time.Now().Unix())
	if fi, err := os.Stat(w.path); err == nil && fi.Size()+int64(len(line)) > w.maxBytes {
		if _, err := os.Stat(w.seg(w.maxFiles - 1)); errors.Is(err, os.ErrNotExist) {
			for i := w.maxFiles - 2; i >= 1; i-- {
				if _, err := os.Stat(w.seg(i)); err == nil {
					if err := os.Rename(w.seg(i), w.seg(i+1)); err != nil {
						return err
					}
				}
			}
			if err := os.Rename(w.path, w.seg(1)); err != nil {
				return err
			}
			w.rotations.Add(1)
		}
	}
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	w.seq.Store(seq)
	return f.Close()
}

// rotLiveSeqs reads the set oldest first and returns the sequence numbers;
// the filler line an in-place compaction may leave first in a file is
// left out (trimFiller).
func rotLiveSeqs(t *testing.T, w *rotLiveWriter) []int64 {
	t.Helper()
	var seqs []int64
	for i := w.maxFiles - 1; i >= 0; i-- {
		data, err := os.ReadFile(w.seg(i))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(trimFiller(t, w.seg(i), data)))
		n := 0
		for sc.Scan() {
			n++
			var r struct {
				Payload struct {
					Seq *int64 `json:"seq"`
				} `json:"payload"`
			}
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.Payload.Seq == nil {
				t.Fatalf("%s line %d: not a writer record: %q (%v)", w.seg(i), n, sc.Text(), err)
			}
			seqs = append(seqs, *r.Payload.Seq)
		}
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return seqs
}

func TestRotatingLiveWriter(t *testing.T) {
	dir := t.TempDir()
	w := &rotLiveWriter{path: filepath.Join(dir, "events.log"), maxBytes: 32 << 10, maxFiles: 4}
	b, err := rotating.New(rotating.Config{Name: "live", Path: w.path, MaxBytes: w.maxBytes,
		MaxFiles: w.maxFiles, StateDir: filepath.Join(t.TempDir(), "state")})
	if err != nil {
		t.Fatal(err)
	}
	keep := int64(800)
	opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: &keep}, PartialLineGrace: time.Minute}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := int64(1); ctx.Err() == nil; seq++ {
			if err := w.write(seq); err != nil {
				writeErr = err
				return
			}
		}
	}()

	deadline := time.Now().Add(45 * time.Second)
	var ok, conflicts, appended int64
	for ok < 50 && time.Now().Before(deadline) {
		rep, err := b.Compact(context.Background(), opts)
		switch {
		case errors.Is(err, backends.ErrConcurrentRotation):
			conflicts++
			continue
		case err != nil:
			cancel()
			wg.Wait()
			t.Fatalf("compaction %d: %v", ok+1, err)
		}
		ok++
		appended += rep.AppendedDuring
		time.Sleep(5 * time.Millisecond) // let the writer fill and rotate again
	}
	cancel()
	wg.Wait()
	if writeErr != nil {
		t.Fatalf("writer: %v", writeErr)
	}
	if ok < 50 {
		t.Fatalf("only %d compactions succeeded in time (%d conflicts)", ok, conflicts)
	}
	last := w.seq.Load()
	t.Logf("%d records written, %d rotations, %d compactions, %d concurrent-rotation retries, %d records appended during compactions",
		last, w.rotations.Load(), ok, conflicts, appended)
	if w.rotations.Load() == 0 || appended == 0 {
		t.Fatalf("the writer did not run concurrently enough (rotations %d, appended during %d)", w.rotations.Load(), appended)
	}

	check := func(stage string) {
		seqs := rotLiveSeqs(t, w)
		if len(seqs) == 0 {
			t.Fatalf("%s: the set is empty", stage)
		}
		for i := 1; i < len(seqs); i++ {
			if seqs[i] != seqs[i-1]+1 {
				t.Fatalf("%s: record %d has seq %d after %d: gap, double or reordering", stage, i, seqs[i], seqs[i-1])
			}
		}
		if seqs[len(seqs)-1] != last {
			t.Fatalf("%s: newest record is %d, the writer wrote up to %d", stage, seqs[len(seqs)-1], last)
		}
	}
	check("after the live run")
	// A last compaction without the writer: exactly the newest keep records.
	if _, err := b.Compact(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	check("after the final compaction")
	if n := int64(len(rotLiveSeqs(t, w))); n != keep {
		t.Fatalf("after the final compaction %d records remain, want %d", n, keep)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name()[0] == '.' {
			t.Errorf("leftover %s", e.Name())
		}
	}
}
