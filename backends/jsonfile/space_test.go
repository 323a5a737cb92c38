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

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/internal/testutil"
)

// spaceRecords returns n records of about 1 KiB each, numbered from 0.
func spaceRecords(n int) [][]byte {
	pad := strings.Repeat("x", 960)
	out := make([][]byte, n)
	for i := range out {
		out[i] = fmt.Appendf(nil, `{"kind": "event", "payload": {"seq": %d, "pad": %q}, "timestamp": %d.0}`+"\n", i, pad, 1795599000+i)
	}
	return out
}

// TestJSONCopyRefusedWithoutSpace: on a filesystem whose free space cannot
// hold the survivors, a compaction is refused before it writes anything
// (ErrNoSpace, an error that says what is needed and what is free), for
// either method; the file, its directory and the state directory are
// unchanged. A dry run is not checked. With room for the survivors and the
// margin the same compaction succeeds.
func TestJSONCopyRefusedWithoutSpace(t *testing.T) {
	mnt := testutil.MountTmpfs(t, 16)
	path := filepath.Join(mnt, "events.ndjson")
	state := filepath.Join(mnt, "state")
	recs := spaceRecords(6000) // about 6 MiB
	original := bytes.Join(recs, nil)
	if err := os.WriteFile(path, original, 0o644); err != nil {
		t.Fatal(err)
	}
	const keep = 4000
	want := bytes.Join(recs[len(recs)-keep:], nil)
	need := int64(len(want))
	opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(keep)}}
	filler := testutil.FillDisk(t, mnt, need/2)
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}

	for _, method := range []string{backends.MethodCopy, backends.MethodAuto} {
		b, err := New(Config{Name: "events", Path: path, StateDir: state, Method: method})
		if err != nil {
			t.Fatal(err)
		}
		// With method auto, recovery allocates the in-place journal's
		// slot (one block) the first time: before, not during, the
		// refused compaction.
		if err := b.Recover(context.Background()); err != nil {
			t.Fatal(err)
		}
		free := testutil.Available(t, mnt)
		_, err = b.Compact(context.Background(), opts)
		if !errors.Is(err, backends.ErrNoSpace) {
			t.Fatalf("method %s: want ErrNoSpace with %d bytes free for %d of survivors, got %v", method, free, need, err)
		}
		msg := err.Error()
		for _, s := range []string{"json target events: compact " + path + ": a copy needs ", " are free on " + mnt + " (method "} {
			if !strings.Contains(msg, s) {
				t.Errorf("method %s: the error %q does not say %q", method, msg, s)
			}
		}
		var nse *backends.NoSpaceError
		if !errors.As(err, &nse) || nse.Need != need || nse.Free != free || nse.Method != method {
			t.Errorf("method %s: NoSpaceError %+v, want need %d, free %d", method, nse, need, free)
		}
		got, _ := os.ReadFile(path)
		after, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, original) || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
			t.Fatalf("method %s: the file changed after a refused compaction", method)
		}
		assertNoLeftovers(t, mnt)
		if entries, _ := os.ReadDir(state); len(entries) > 0 {
			for _, e := range entries {
				if strings.HasSuffix(e.Name(), ".journal") || strings.Contains(e.Name(), ".watcher-") {
					t.Errorf("method %s: leftover in the state directory: %s", method, e.Name())
				}
			}
		}
		if got := testutil.Available(t, mnt); got != free {
			t.Errorf("method %s: %d bytes free after the refusal, %d before", method, got, free)
		}

		// A dry run writes nothing and is not refused.
		dry := opts
		dry.DryRun = true
		rep, err := b.Compact(context.Background(), dry)
		if err != nil || rep.AfterRecords != keep {
			t.Fatalf("method %s: dry run on a full disk: %+v, %v", method, rep, err)
		}
	}

	// Room for the survivors and the margin: the compaction runs.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testutil.FillDisk(t, mnt, need+backends.CopyMargin(need)+256<<10)
	b, err := New(Config{Name: "events", Path: path, StateDir: state, Method: backends.MethodCopy})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := b.Compact(context.Background(), opts)
	if err != nil {
		t.Fatalf("with room for the copy: %v", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) || rep.AfterRecords != keep || rep.Method != backends.MethodCopy {
		t.Fatalf("with room for the copy: %d bytes, report %+v; want the newest %d records", len(got), rep, keep)
	}
	assertNoLeftovers(t, mnt)
}

// TestJSONCopySpaceCountsKeptTail: an unterminated last line that is kept
// (a write in flight) is part of what the copy writes.
func TestJSONCopySpaceCountsKeptTail(t *testing.T) {
	mnt := testutil.MountTmpfs(t, 16)
	path := filepath.Join(mnt, "events.ndjson")
	recs := spaceRecords(3000)
	tail := bytes.Repeat([]byte("y"), 2<<20) // a 2 MiB line in flight
	data := append(bytes.Join(recs, nil), append([]byte(`{"kind": "event", "payload": "`), tail...)...)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{Name: "events", Path: path, StateDir: filepath.Join(mnt, "state"), Method: backends.MethodCopy})
	if err != nil {
		t.Fatal(err)
	}
	kept := int64(len(bytes.Join(recs[len(recs)-100:], nil)))
	tailLen := int64(len(data)) - int64(len(bytes.Join(recs, nil)))
	testutil.FillDisk(t, mnt, kept+backends.CopyMargin(kept)+tailLen/2)
	_, err = b.Compact(context.Background(), backends.CompactOptions{
		Retention: backends.Retention{MaxRecords: backends.Int64(100)}, PartialLineGrace: -1})
	var nse *backends.NoSpaceError
	if !errors.As(err, &nse) || nse.Need != kept+tailLen {
		t.Fatalf("want ErrNoSpace for %d bytes (%d of records, %d of the line in flight), got %v", kept+tailLen, kept, tailLen, err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("the file changed after a refused compaction")
	}
	assertNoLeftovers(t, mnt)
}

// TestJSONInPlaceNeedsNoFreeSpace: on a full ext4, where a copy of the
// survivors is refused, method auto cuts the dropped head out in place.
func TestJSONInPlaceNeedsNoFreeSpace(t *testing.T) {
	mnt := testutil.MountExt4(t, 32)
	path := filepath.Join(mnt, "events.ndjson")
	state := filepath.Join(mnt, "state")
	recs := spaceRecords(6000)
	if err := os.WriteFile(path, bytes.Join(recs, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	const keep = 4000
	want := bytes.Join(recs[len(recs)-keep:], nil)
	opts := backends.CompactOptions{Retention: backends.Retention{MaxRecords: backends.Int64(keep)}}
	testutil.FillDisk(t, mnt, 512<<10)

	copier, err := New(Config{Name: "events", Path: path, StateDir: state, Method: backends.MethodCopy})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := copier.Compact(context.Background(), opts); !errors.Is(err, backends.ErrNoSpace) {
		t.Fatalf("method copy on a full disk: want ErrNoSpace, got %v", err)
	}
	auto, err := New(Config{Name: "events", Path: path, StateDir: state, Method: backends.MethodAuto})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := auto.Compact(context.Background(), opts)
	if err != nil {
		t.Fatalf("method auto on a full ext4: %v", err)
	}
	got, _ := os.ReadFile(path)
	if rep.Method != backends.MethodInPlace || rep.AfterRecords != keep || !bytes.HasSuffix(got, want) || len(got) >= len(want)+(64<<10) {
		t.Fatalf("method auto on a full ext4: report %+v, %d bytes; want the newest %d records (%d bytes) in place", rep, len(got), keep, len(want))
	}
	assertNoLeftovers(t, mnt)
}
