package jsonfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/fsx"
	"github.com/papyra/watcher/backends/ndjson"
	"github.com/papyra/watcher/internal/testutil"
)

// recordLines returns n Papyra-shaped lines numbered from first, one
// second apart from ts.
func recordLines(first, n int, ts float64) []byte {
	var b bytes.Buffer
	for i := first; i < first+n; i++ {
		fmt.Fprintf(&b, `{"kind": "event", "system_id": "local", "actor_address": "local://w/%d", "event_type": "tick", "payload": {"n": %d}, "timestamp": %.1f}`+"\n",
			i%7, i, ts+float64(i))
	}
	return b.Bytes()
}

func appendTo(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

// newestLines returns the last n lines of b.
func newestLines(b []byte, n int) []byte {
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	return bytes.Join(lines[max(0, len(lines)-n):], nil)
}

// inPlaceDir is a directory on a filesystem that can collapse (ext4).
func inPlaceDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, 64<<10))
	err = fsx.Collapse(f, 4096)
	f.Close()
	if errors.Is(err, fsx.ErrNoCollapse) {
		return testutil.MountExt4(t, 64)
	}
	return dir
}

// TestJSONInPlaceSteadyState: a count limit over a growing file is kept in
// place, compaction after compaction: same inode, the newest records byte
// for byte after at most one filler line, the file shrinking.
func TestJSONInPlaceSteadyState(t *testing.T) {
	dir := inPlaceDir(t)
	b, path := newTestJSONMethod(t, dir, backends.MethodAuto)
	all := recordLines(0, 20000, 1795599000)
	if err := os.WriteFile(path, all, 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(path)
	opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(15000)}, Now: unixTime(1795700000)}
	next := 20000
	for round := range 4 {
		rep, err := b.Compact(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Method != backends.MethodInPlace {
			t.Fatalf("round %d: method %q, want in_place (notes %v)", round, rep.Method, rep.Notes)
		}
		got, _ := os.ReadFile(path)
		if body := stripFiller(t, got); !bytes.Equal(body, newestLines(all, 15000)) {
			t.Fatalf("round %d: the file is not the newest 15000 lines\n%s", round, firstDiff(body, newestLines(all, 15000)))
		}
		papyraScan(t, got)
		if rep.AfterRecords != 15000 || rep.BeforeRecords != int64(15000+(map[bool]int{true: 5000, false: 3000}[round == 0])) {
			t.Fatalf("round %d: records %d → %d", round, rep.BeforeRecords, rep.AfterRecords)
		}
		if *rep.AfterBytes != int64(len(got)) {
			t.Fatalf("round %d: after_bytes %d, file %d", round, *rep.AfterBytes, len(got))
		}
		checkReportInvariants(t, rep)
		fi, _ := os.Stat(path)
		if !fsx.SameInode(fi, before) {
			t.Fatal("the inode changed")
		}
		more := recordLines(next, 3000, 1795599000)
		next += 3000
		appendTo(t, path, more)
		all = append(all, more...)
	}
	// Nothing more to drop: method none, nothing changed.
	got, _ := os.ReadFile(path)
	rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(1 << 40)}})
	if err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); rep.Method != backends.MethodNone || !bytes.Equal(after, got) {
		t.Fatalf("nothing to drop: method %q, file changed %v", rep.Method, !bytes.Equal(after, got))
	}
	assertNoLeftovers(t, dir)
}

// TestJSONInPlaceFallsBack: where in place would not give a rewrite's
// result, or is not allowed, the copy runs, and the notes say why.
func TestJSONInPlaceFallsBack(t *testing.T) {
	opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(1000)}, Now: unixTime(1795700000)}
	cases := []struct {
		name  string
		setup func(t *testing.T, dir, path string) func()
		note  string
	}{
		{"invalid line among the kept", func(t *testing.T, dir, path string) func() {
			appendTo(t, path, []byte("not json\n"))
			appendTo(t, path, recordLines(5000, 10, 1795599000))
			return func() {}
		}, "between kept records"},
		{"hard link", func(t *testing.T, dir, path string) func() {
			if err := os.Link(path, filepath.Join(dir, "snapshot.ndjson")); err != nil {
				t.Fatal(err)
			}
			return func() {}
		}, "hard links"},
		{"open elsewhere", func(t *testing.T, dir, path string) func() {
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			return func() { f.Close() }
		}, "no write lease"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := inPlaceDir(t)
			b, path := newTestJSONMethod(t, dir, backends.MethodAuto)
			if err := os.WriteFile(path, recordLines(0, 5000, 1795599000), 0o644); err != nil {
				t.Fatal(err)
			}
			done := c.setup(t, dir, path)
			rep, err := b.Compact(context.Background(), opts)
			done()
			if err != nil {
				t.Fatal(err)
			}
			if rep.Method != backends.MethodCopy || !strings.Contains(strings.Join(rep.Notes, "; "), c.note) {
				t.Fatalf("method %q, notes %q; want copy and a note with %q", rep.Method, rep.Notes, c.note)
			}
			got, _ := os.ReadFile(path)
			if n := bytes.Count(got, []byte("\n")); n != 1000 {
				t.Fatalf("%d lines after the copy, want 1000", n)
			}
		})
	}
}

// TestJSONInPlaceTmpfs: tmpfs cannot collapse: the copy runs and says why.
func TestJSONInPlaceTmpfs(t *testing.T) {
	dir := testutil.MountTmpfs(t, 16)
	b, path := newTestJSONMethod(t, dir, backends.MethodAuto)
	all := recordLines(0, 5000, 1795599000)
	os.WriteFile(path, all, 0o644)
	rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(1000)}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Method != backends.MethodCopy || !strings.Contains(strings.Join(rep.Notes, "; "), "cannot collapse") {
		t.Fatalf("method %q, notes %q; want copy with a note that the filesystem cannot collapse", rep.Method, rep.Notes)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, newestLines(all, 1000)) {
		t.Fatal("the copy did not keep the newest 1000 lines")
	}
}

// TestJSONInPlaceCrash: a crash at every point of the in-place path, then
// lines appended by a writer, then Recover and a compaction: the newest
// records, each once, in order, after at most one filler line; no journal
// left.
func TestJSONInPlaceCrash(t *testing.T) {
	for _, point := range []string{"inplace-journaled", "headcut-planned", "headcut-collapsed", "headcut-filled"} {
		t.Run(point, func(t *testing.T) {
			dir := inPlaceDir(t)
			b, path := newTestJSONMethod(t, dir, backends.MethodAuto)
			all := recordLines(0, 8000, 1795599000)
			os.WriteFile(path, all, 0o644)
			opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(3000)}, Now: unixTime(1795700000)}
			restore := fsx.SetCrashHook(func(p string) error {
				if p == point {
					return errors.New("kill -9")
				}
				return nil
			})
			_, err := b.Compact(context.Background(), opts)
			restore()
			if !errors.Is(err, fsx.ErrSimulatedCrash) {
				t.Fatalf("compaction: %v, want the simulated crash", err)
			}
			more := recordLines(8000, 500, 1795599000)
			appendTo(t, path, more)
			all = append(all, more...)
			// A new backend: a restarted process remembers nothing.
			b, _ = newTestJSONMethod(t, dir, backends.MethodAuto)
			if err := b.Recover(context.Background()); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(path)
			papyraScan(t, got)
			if body := stripFiller(t, got); !bytes.HasSuffix(all, body) {
				t.Fatalf("after recovery the file is not a suffix of what was written")
			}
			rep, err := b.Compact(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			got, _ = os.ReadFile(path)
			if body := stripFiller(t, got); !bytes.Equal(body, newestLines(all, 3000)) {
				t.Fatalf("method %s: not the newest 3000 lines\n%s", rep.Method, firstDiff(body, newestLines(all, 3000)))
			}
			if ents, _ := os.ReadDir(filepath.Join(dir, "state")); len(ents) > 0 {
				for _, e := range ents {
					if strings.HasSuffix(e.Name(), ".headcut") {
						// The slot stays allocated; it must hold nothing.
						b, _ := os.ReadFile(filepath.Join(dir, "state", e.Name()))
						if len(bytes.Trim(b, "\x00")) > 0 {
							t.Fatalf("journal %s left: %q", e.Name(), b[:min(len(b), 80)])
						}
					}
				}
			}
		})
	}
}

// TestJSONInPlaceLeaseHoldsWriters: an open of the file by a writer while
// the head is cut waits for the cut (the write lease), so its line lands
// after the kept records, never at an offset that moved.
func TestJSONInPlaceLeaseHoldsWriters(t *testing.T) {
	dir := inPlaceDir(t)
	b, path := newTestJSONMethod(t, dir, backends.MethodAuto)
	all := recordLines(0, 8000, 1795599000)
	os.WriteFile(path, all, 0o644)
	line := recordLines(9000, 1, 1795599000)
	opened := make(chan struct{})
	wrote := make(chan error, 1)
	var early bool
	restore := fsx.SetCrashHook(func(p string) error {
		if p == "headcut-collapsed" {
			go func() {
				f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
				close(opened)
				if err == nil {
					_, err = f.Write(line)
					f.Close()
				}
				wrote <- err
			}()
			// Without the lease the open returns at once; with it, it
			// waits however long this takes.
			time.Sleep(50 * time.Millisecond)
			select {
			case <-opened:
				early = true
			default:
			}
		}
		return nil
	})
	rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(3000)}})
	restore()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if early {
		t.Fatal("a writer opened the file while its head was being cut")
	}
	if rep.Method != backends.MethodInPlace {
		t.Fatalf("method %q (notes %v)", rep.Method, rep.Notes)
	}
	got, _ := os.ReadFile(path)
	want := append(newestLines(all, 3000), line...)
	if body := stripFiller(t, got); !bytes.Equal(body, want) {
		t.Fatalf("the writer's line is not after the kept records\n%s", firstDiff(body, want))
	}
	papyraScan(t, got)
}

// TestJSONInPlaceTornCollapse: a power loss that leaves the head torn
// (zeros and part of a line before the first kept line, not where the
// journal expects it) is repaired by Recover into one filler line; a head
// where the kept lines cannot be found is left alone, the journal kept, and
// the error names it.
func TestJSONInPlaceTornCollapse(t *testing.T) {
	dir := inPlaceDir(t)
	b, path := newTestJSONMethod(t, dir, backends.MethodAuto)
	all := recordLines(0, 8000, 1795599000)
	os.WriteFile(path, all, 0o644)
	opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(3000)}}
	restore := fsx.SetCrashHook(func(p string) error {
		if p == "headcut-collapsed" {
			return errors.New("power loss")
		}
		return nil
	})
	_, err := b.Compact(context.Background(), opts)
	restore()
	if !errors.Is(err, fsx.ErrSimulatedCrash) {
		t.Fatalf("compaction: %v", err)
	}
	kept := newestLines(all, 3000)
	got, _ := os.ReadFile(path)
	if !bytes.HasSuffix(got, kept) {
		t.Fatal("after the collapse the kept lines are not at the end")
	}
	// Tear the head: zeros, a partial line, 37 bytes more than the journal
	// says.
	head := append(make([]byte, 40), []byte(`ad": {"n": 12}, "timestamp": 1795599012.0}`+"\n")...)
	head = append(head, bytes.Repeat([]byte("x"), len(got)-len(kept)+37-len(head)-1)...)
	head = append(head, '\n')
	torn := append(head, kept...)
	if err := os.WriteFile(path, torn, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := b.Recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(path)
	papyraScan(t, got)
	if body := stripFiller(t, got); !bytes.Equal(body, kept) {
		t.Fatalf("the torn head was not repaired into one filler line\n%s", firstDiff(body, kept))
	}

	// The kept lines are nowhere near the head: nothing is touched.
	restore = fsx.SetCrashHook(func(p string) error {
		if p == "headcut-collapsed" {
			return errors.New("power loss")
		}
		return nil
	})
	appendTo(t, path, recordLines(8000, 3000, 1795599000))
	_, err = b.Compact(context.Background(), opts)
	restore()
	if !errors.Is(err, fsx.ErrSimulatedCrash) {
		t.Fatalf("compaction: %v", err)
	}
	garbage := append(bytes.Repeat([]byte{0}, 20000), '\n')
	os.WriteFile(path, garbage, 0o644)
	err = b.Recover(context.Background())
	if !errors.Is(err, ndjson.ErrTornHead) || !strings.Contains(err.Error(), ".headcut") {
		t.Fatalf("Recover of an unrecognisable head: %v; want ErrTornHead naming the journal", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, garbage) {
		t.Fatal("Recover changed a head it could not make sense of")
	}
	if _, err := b.Compact(context.Background(), opts); !errors.Is(err, ndjson.ErrTornHead) {
		t.Fatalf("a compaction after it: %v; want the same error until someone looks", err)
	}
}

// TestJSONInPlaceDiskFull: on a disk with not one block free (root's
// reserve used up too), with the state directory on it, a compaction in
// place still runs: its journal slot was allocated by an earlier recovery.
func TestJSONInPlaceDiskFull(t *testing.T) {
	mnt := testutil.MountExt4(t, 64)
	path := filepath.Join(mnt, "events.ndjson")
	b, err := New(Config{Name: "events", Path: path, StateDir: filepath.Join(mnt, "state")})
	if err != nil {
		t.Fatal(err)
	}
	all := recordLines(0, 100000, 1795599000)
	if err := os.WriteFile(path, all, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := b.Recover(context.Background()); err != nil { // as at the daemon's start
		t.Fatal(err)
	}
	testutil.FillDisk(t, mnt, 0)
	f, err := os.OpenFile(filepath.Join(mnt, "reserve.bin"), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	for buf := make([]byte, 4096); ; {
		if _, err := f.Write(buf); err != nil {
			break // ENOSPC: root's reserve is used up too
		}
	}
	f.Close()
	if err := os.WriteFile(filepath.Join(mnt, "probe"), []byte("x"), 0o600); err == nil {
		t.Fatal("the disk is not full")
	}
	rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(40000)}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Method != backends.MethodInPlace {
		t.Fatalf("method %q (notes %v)", rep.Method, rep.Notes)
	}
	got, _ := os.ReadFile(path)
	if body := stripFiller(t, got); !bytes.Equal(body, newestLines(all, 40000)) {
		t.Fatal("not the newest 40000 records")
	}
}

// TestJSONEstimatorSharesIndex: the estimator reads appended lines into the
// index the compaction uses, and after a cut in place the index has moved
// with the file: the next refresh reads nothing again.
func TestJSONEstimatorSharesIndex(t *testing.T) {
	dir := inPlaceDir(t)
	b, path := newTestJSONMethod(t, dir, backends.MethodAuto)
	os.WriteFile(path, recordLines(0, 20000, 1795599000), 0o644)
	est := b.NewEstimator()
	r := backends.Retention{MaxRecords: backends.Int64(15000)}
	now := unixTime(1795700000)
	e, err := est.Estimate(context.Background(), now, r)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if b.index.End() != fi.Size() || e.ReclaimableRecords != 5000 || e.Records != 20000 {
		t.Fatalf("after a refresh: index to %d of %d, estimate %+v", b.index.End(), fi.Size(), e)
	}
	rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: r, Now: now})
	if err != nil || rep.Method != backends.MethodInPlace {
		t.Fatalf("compaction: %v, method %q", err, rep.Method)
	}
	fi, _ = os.Stat(path)
	if b.index.End() != fi.Size() {
		t.Fatalf("after the cut the index covers %d of %d bytes", b.index.End(), fi.Size())
	}
	last := &b.index.Blocks()[len(b.index.Blocks())-1]
	e, err = est.Estimate(context.Background(), now, r)
	if err != nil {
		t.Fatal(err)
	}
	if e.Records != 15000 || e.ReclaimableRecords != 0 {
		t.Fatalf("after the cut: estimate %+v", e)
	}
	if now := &b.index.Blocks()[len(b.index.Blocks())-1]; now != last {
		t.Fatal("the refresh after the cut rebuilt the index")
	}
}

// TestJSONInPlaceSmallDrop: with less than a block to drop, method auto
// overwrites the dropped lines with one filler line instead of rewriting
// the whole file (which would cost what the file keeps): the same inode and
// size, the newest records after the filler; the next compaction, whose cut
// passes a block boundary, collapses the filler away with the lines after
// it.
func TestJSONInPlaceSmallDrop(t *testing.T) {
	dir := inPlaceDir(t)
	b, path := newTestJSONMethod(t, dir, backends.MethodAuto)
	all := recordLines(0, 20000, 1795599000)
	if err := os.WriteFile(path, all, 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(path)
	compact := func(keep int64) backends.Report {
		t.Helper()
		rep, err := b.Compact(context.Background(), backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(keep)}, Now: unixTime(1795700000)})
		if err != nil {
			t.Fatal(err)
		}
		checkReportInvariants(t, rep)
		got, _ := os.ReadFile(path)
		if body := stripFiller(t, got); !bytes.Equal(body, newestLines(all, int(keep))) {
			t.Fatalf("keep %d: the file is not the newest lines\n%s", keep, firstDiff(body, newestLines(all, int(keep))))
		}
		papyraScan(t, got)
		if fi, _ := os.Stat(path); !fsx.SameInode(fi, before) {
			t.Fatalf("keep %d: the inode changed (method %s, notes %v)", keep, rep.Method, rep.Notes)
		}
		return rep
	}
	// Three records (a few hundred bytes) go.
	rep := compact(19997)
	if rep.Method != backends.MethodInPlace || rep.RemovedRecords != 3 || *rep.AfterBytes != *rep.BeforeBytes {
		t.Fatalf("small drop: method %q, removed %d, bytes %d → %d; want in_place, 3, unchanged (notes %v)",
			rep.Method, rep.RemovedRecords, *rep.BeforeBytes, *rep.AfterBytes, rep.Notes)
	}
	// Many more go: the filler and the lines after it are collapsed away.
	rep = compact(15000)
	if rep.Method != backends.MethodInPlace || *rep.AfterBytes >= *rep.BeforeBytes {
		t.Fatalf("large drop after a small one: method %q, bytes %d → %d", rep.Method, *rep.BeforeBytes, *rep.AfterBytes)
	}
}
