package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/jsonfile"
	"github.com/papyra/watcher/backends/ndjson"
	"github.com/papyra/watcher/backends/rotating"
)

func record(seq int64) string {
	return fmt.Sprintf(`{"kind": "event", "system_id": "s", "actor_address": "local://a/0", "event_type": "Tick", "payload": {"seq": %d}, "timestamp": %d.0}`+"\n", seq, time.Now().Unix())
}

// writer appends records with increasing seq to path (Papyra's way: open
// O_APPEND, one write, close) until stop; last is the last seq written.
func writer(t *testing.T, path string, stop <-chan struct{}, last *atomic.Int64, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := int64(1); ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				t.Error(err)
				return
			}
			f.WriteString(record(seq))
			f.Close()
			last.Store(seq)
			if seq%50 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
}

// seqs reads the concatenated byte ranges of a snapshot.
func seqs(t *testing.T, s Snapshot) ([]int64, []byte) {
	var all []byte
	for _, f := range s.Files {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(data)) < f.Bytes {
			t.Fatalf("%s has %d bytes, snapshot says %d", f.Path, len(data), f.Bytes)
		}
		data = data[:f.Bytes]
		// A compaction in place may have left a filler line first.
		if i := bytes.IndexByte(data, '\n'); i >= 0 && ndjson.IsFiller(data[:i+1]) {
			data = data[i+1:]
		}
		all = append(all, data...)
	}
	var out []int64
	sc := bufio.NewScanner(bytes.NewReader(all))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r struct {
			Payload struct{ Seq int64 } `json:"payload"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("bad line %q: %v", sc.Text(), err)
		}
		out = append(out, r.Payload.Seq)
	}
	return out, all
}

// TestSnapshotJSONLiveWriter: with a live writer and two compactions after
// the snapshot, the snapshot's byte ranges hold one contiguous run reaching
// the last record written before it, and never change; Release removes it.
func TestSnapshotJSONLiveWriter(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.ndjson")
	b, err := jsonfile.New(jsonfile.Config{Name: "events", Path: path, StateDir: filepath.Join(dir, "state")})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Open(filepath.Join(dir, "state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var last atomic.Int64
	var wg sync.WaitGroup
	writer(t, path, stop, &last, &wg)
	defer func() { close(stop); wg.Wait() }()
	ctx := context.Background()
	maxRecords := int64(2000)
	compact := func() {
		t.Helper()
		if _, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: &maxRecords}, PartialLineGrace: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	for last.Load() < 5000 {
		time.Sleep(time.Millisecond)
	}
	compact()
	before := last.Load()
	s, err := m.Take(ctx, NewID(time.Now()), "events", path, b, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got, data := seqs(t, s)
	check := func(got []int64) {
		t.Helper()
		if len(got) == 0 || got[len(got)-1] < before {
			t.Fatalf("snapshot ends at %v, want at least %d", got[len(got)-1:], before)
		}
		for i := 1; i < len(got); i++ {
			if got[i] != got[i-1]+1 {
				t.Fatalf("not contiguous at %d: %d then %d", i, got[i-1], got[i])
			}
		}
	}
	check(got)
	// Two compactions while the writer goes on.
	for range 2 {
		target := last.Load() + 3000
		for last.Load() < target {
			time.Sleep(time.Millisecond)
		}
		compact()
	}
	got2, data2 := seqs(t, s)
	if !bytes.Equal(data, data2) {
		t.Fatalf("the snapshot's bytes changed after two compactions")
	}
	check(got2)
	if u := m.Usage()["events"]; u.Held != 1 || u.PinnedBytes == 0 {
		t.Fatalf("usage %+v: want one snapshot pinning the old file", u)
	}
	// A restart keeps it.
	m2, err := Open(filepath.Join(dir, "state"), nil)
	if err != nil || len(m2.List()) != 1 {
		t.Fatalf("reopened: %v, %v", m2.List(), err)
	}
	if _, err := m2.Release(s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Fatalf("snapshot dir still there: %v", err)
	}
	if _, err := m2.Release(s.ID); err == nil {
		t.Fatal("second release should fail")
	}
}

// TestSnapshotExpire: byte counts stop at the last complete line, and an
// expired snapshot is removed.
func TestSnapshotExpire(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "e.ndjson")
	os.WriteFile(path, []byte(record(1)+record(2)+`{"partial`), 0o644)
	b, _ := jsonfile.New(jsonfile.Config{Name: "e", Path: path, StateDir: filepath.Join(dir, "state")})
	m, _ := Open(filepath.Join(dir, "state"), nil)
	s, err := m.Take(context.Background(), NewID(time.Now()), "e", path, b, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Files) != 1 || s.Files[0].Bytes != int64(len(record(1))*2) {
		t.Fatalf("files %+v: want the complete lines only", s.Files)
	}
	if ids := m.Expire(time.Now()); len(ids) != 0 {
		t.Fatalf("expired too early: %v", ids)
	}
	if ids := m.Expire(time.Now().Add(time.Minute)); len(ids) != 1 {
		t.Fatalf("not expired: %v", ids)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Fatalf("dir left: %v", err)
	}
}

// rotatingWriter appends records with increasing seq to a rotating set as
// Papyra does: when the line would take the active file past maxBytes and
// the oldest slot is free, shift .i to .i+1 and the active file to .1; then
// open O_APPEND, one write, close. It never sleeps, so it rotates every few
// hundred microseconds.
func rotatingWriter(t *testing.T, path string, maxBytes int64, maxFiles int, stop <-chan struct{}, last, rotations *atomic.Int64, wg *sync.WaitGroup) {
	seg := func(i int) string {
		if i == 0 {
			return path
		}
		return fmt.Sprintf("%s.%d", path, i)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := int64(1); ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			line := record(seq)
			if fi, err := os.Stat(path); err == nil && fi.Size() > 0 && fi.Size()+int64(len(line)) > maxBytes {
				if _, err := os.Stat(seg(maxFiles - 1)); os.IsNotExist(err) {
					for i := maxFiles - 2; i >= 1; i-- {
						if err := os.Rename(seg(i), seg(i+1)); err != nil && !os.IsNotExist(err) {
							t.Error(err)
							return
						}
					}
					if err := os.Rename(path, seg(1)); err != nil {
						t.Error(err)
						return
					}
					rotations.Add(1)
				}
			}
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				t.Error(err)
				return
			}
			f.WriteString(line)
			f.Close()
			last.Store(seq)
		}
	}()
}

// TestSnapshotRotatingWhileRotating: snapshots of a rotating set taken
// while the writer rotates every few records (and compactions shrink the
// set between them) each hold one contiguous run, without duplicates,
// reaching the last record written before the snapshot; their bytes do not
// change as the writer rotates and the watcher compacts on.
func TestSnapshotRotatingWhileRotating(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	const maxBytes, maxFiles = 4096, 60
	b, err := rotating.New(rotating.Config{Name: "audit", Path: path, MaxBytes: maxBytes, MaxFiles: maxFiles, StateDir: filepath.Join(dir, "state")})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Open(filepath.Join(dir, "state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var last, rotations atomic.Int64
	var wg sync.WaitGroup
	rotatingWriter(t, path, maxBytes, maxFiles, stop, &last, &rotations, &wg)
	stopped := false
	stopWriter := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopWriter()
	ctx := context.Background()
	maxRecords := int64(400)
	compact := func() {
		t.Helper()
		_, err := b.Compact(ctx, backends.CompactOptions{Retention: backends.Retention{MaxRecords: &maxRecords}, PartialLineGrace: time.Minute})
		if err != nil && !errors.Is(err, backends.ErrConcurrentRotation) {
			t.Fatal(err)
		}
	}
	for rotations.Load() < 20 {
		time.Sleep(time.Millisecond)
	}
	type taken struct {
		s    Snapshot
		data []byte
	}
	var snaps []taken
	during := 0 // snapshots the writer rotated during
	for i := 0; i < 20; i++ {
		compact()
		before, rotBefore := last.Load(), rotations.Load()
		s, err := m.Take(ctx, NewID(time.Now()), "audit", path, b, time.Hour)
		if err != nil {
			t.Fatalf("snapshot %d: %v", i, err)
		}
		if rotations.Load() != rotBefore {
			during++
		}
		got, data := seqs(t, s)
		if len(s.Files) < 2 {
			t.Fatalf("snapshot %d has %d files, want the set", i, len(s.Files))
		}
		wantRun(t, fmt.Sprintf("snapshot %d", i), got, before)
		snaps = append(snaps, taken{s, data})
	}
	t.Logf("%d snapshots, %d with rotations while they were taken, %d rotations in all", len(snaps), during, rotations.Load())
	if during == 0 {
		t.Fatal("the writer never rotated while a snapshot was taken: the test proves nothing")
	}
	// More rotations and two compactions; then every snapshot still reads
	// the same bytes.
	for range 2 {
		r := rotations.Load() + 20
		compact() // frees slots of a full set, so the writer rotates on
		for rotations.Load() < r {
			time.Sleep(time.Millisecond)
		}
	}
	compact()
	stopWriter()
	for i, tk := range snaps {
		if _, data := seqs(t, tk.s); !bytes.Equal(data, tk.data) {
			t.Fatalf("snapshot %d changed after later rotations and compactions", i)
		}
	}
	for _, tk := range snaps {
		if _, err := m.Release(tk.s.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(tk.s.Dir); !os.IsNotExist(err) {
			t.Fatalf("%s left: %v", tk.s.Dir, err)
		}
	}
}

// wantRun fails unless got is one run n, n+1, … reaching at least last.
func wantRun(t *testing.T, what string, got []int64, last int64) {
	t.Helper()
	if len(got) == 0 || got[len(got)-1] < last {
		t.Fatalf("%s ends at %v, want at least %d", what, got[max(0, len(got)-1):], last)
	}
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1]+1 {
			t.Fatalf("%s is not contiguous at %d: %d then %d", what, i, got[i-1], got[i])
		}
	}
}

// TestReleaseSeveralTargets: one id over two targets (as a pre-backup takes
// them) is released whole: both directories and the record go.
func TestReleaseSeveralTargets(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	m, err := Open(state, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := NewID(time.Now())
	var dirs []string
	for _, name := range []string{"a", "b", "c"} {
		path := filepath.Join(dir, name+".ndjson")
		os.WriteFile(path, []byte(record(1)), 0o644)
		b, err := jsonfile.New(jsonfile.Config{Name: name, Path: path, StateDir: state})
		if err != nil {
			t.Fatal(err)
		}
		s, err := m.Take(context.Background(), id, name, path, b, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, s.Dir)
	}
	targets, err := m.Release(id)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(targets)
	if !slices.Equal(targets, []string{"a", "b", "c"}) {
		t.Errorf("released targets %q, want a, b, c", targets)
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", d, err)
		}
	}
	if l := m.List(); len(l) != 0 {
		t.Errorf("still held: %+v", l)
	}
	if _, err := os.Stat(filepath.Join(state, "snapshots", id+".json")); !os.IsNotExist(err) {
		t.Errorf("record left: %v", err)
	}
}
