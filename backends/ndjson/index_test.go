package ndjson

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
)

// referenceCut offers every line of data, newest first, to a fresh cut and
// returns which lines are kept (by index) with the lines' offsets.
func referenceCut(data []byte, r backends.Retention, now time.Time) (kept []bool, offs []int64) {
	lines := bytes.SplitAfter(data, []byte("\n"))
	lines = lines[:len(lines)-1] // data ends with a newline
	var off int64
	for _, l := range lines {
		offs = append(offs, off)
		off += int64(len(l))
	}
	kept = make([]bool, len(lines))
	cut := r.NewCut(now)
	for i := len(lines) - 1; i >= 0; i-- {
		if i == 0 && IsFiller(lines[0]) {
			continue
		}
		kept[i] = cut.Offer(ClassifyLine(lines[i][:len(lines[i])-1]), int64(len(lines[i]))) == backends.Kept
	}
	return kept, offs
}

// TestIndexPlanCutProperty: on random files (mostly ordered records, some
// out of order, invalid or without timestamp, a filler line first at
// times) and random retentions, PlanCut says in place exactly when the
// kept lines are a suffix of the file, at the suffix's offset, with the
// reference cut's counts; blocks are small so that cuts fall inside and
// between them.
func TestIndexPlanCutProperty(t *testing.T) {
	old, oldPar := indexBlockSize, indexParallelMin
	indexBlockSize, indexParallelMin = 700, 1000 // small blocks, and both halves of extend
	t.Cleanup(func() { indexBlockSize, indexParallelMin = old, oldPar })
	rng := rand.New(rand.NewPCG(7, 11))
	dir := t.TempDir()
	inPlace := 0
	for iter := range 400 {
		var buf bytes.Buffer
		if rng.IntN(4) == 0 {
			buf.Write(Filler(2 + rng.IntN(40)))
		}
		n := rng.IntN(200)
		for i := range n {
			ts := 1000 + i
			switch rng.IntN(60) {
			case 0:
				buf.WriteString("not json\n")
				continue
			case 1:
				fmt.Fprintf(&buf, `{"kind":"event","n":%d}`+"\n", i)
				continue
			case 2:
				ts = 1000 + rng.IntN(200)
			}
			fmt.Fprintf(&buf, `{"kind":"event","timestamp":%d.5,"n":%d,"p":"%s"}`+"\n", ts, i, bytes.Repeat([]byte{'x'}, rng.IntN(30)))
		}
		data := buf.Bytes()
		var r backends.Retention
		if rng.IntN(2) == 0 {
			r.MaxRecords = backends.Int64(int64(rng.IntN(220)))
		}
		if rng.IntN(2) == 0 {
			age := float64(rng.IntN(250))
			r.MaxAgeSeconds = &age
		}
		if rng.IntN(3) == 0 {
			r.MaxTotalBytes = backends.Int64(int64(rng.IntN(12000)))
		}
		now := time.Unix(1200, 0)
		path := filepath.Join(dir, fmt.Sprintf("f%d", iter))
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		var x Index
		// Index in two steps, as a file that grew between compactions.
		mid, _ := LastLineEnd(f, int64(len(data)/2))
		if err := x.Update(context.Background(), f, mid); err != nil {
			t.Fatal(err)
		}
		if err := x.Update(context.Background(), f, int64(len(data))); err != nil {
			t.Fatal(err)
		}
		p, err := x.PlanCut(context.Background(), f, r.NewCut(now))
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		kept, offs := referenceCut(data, r, now)
		// The reference: the kept lines form a suffix [first, end)?
		first := len(kept)
		for first > 0 && kept[first-1] {
			first--
		}
		suffix := true
		var nKept int64
		for i, k := range kept {
			if k {
				nKept++
				if i < first {
					suffix = false
				}
			}
		}
		if p.InPlace != suffix {
			t.Fatalf("iter %d: InPlace %v (%s), reference suffix %v", iter, p.InPlace, p.Why, suffix)
		}
		if !suffix {
			continue
		}
		inPlace++
		wantOff := int64(len(data))
		if first < len(offs) {
			wantOff = offs[first]
		}
		fillerEnd := x.fillerEnd
		if p.Off != wantOff && !(p.Off <= fillerEnd && wantOff <= fillerEnd) && !(nKept == int64(len(kept)) && p.Off == 0) {
			t.Fatalf("iter %d: cut at %d, reference %d (filler %d, %s)", iter, p.Off, wantOff, fillerEnd, fmtR(r))
		}
		if p.Kept != nKept {
			t.Fatalf("iter %d: kept %d, reference %d", iter, p.Kept, nKept)
		}
		d := p.Dropped
		if got := d.Age + d.Count + d.Bytes + d.NoTimestamp; p.Records-p.Kept != got {
			t.Fatalf("iter %d: %d records, %d kept, dropped %+v", iter, p.Records, p.Kept, d)
		}
	}
	if inPlace < 100 {
		t.Fatalf("only %d of 400 cases in place: the generator does not exercise PlanCut", inPlace)
	}
}

func fmtR(r backends.Retention) string {
	s := ""
	if r.MaxRecords != nil {
		s += fmt.Sprintf("records=%d ", *r.MaxRecords)
	}
	if r.MaxAgeSeconds != nil {
		s += fmt.Sprintf("age=%v ", *r.MaxAgeSeconds)
	}
	if r.MaxTotalBytes != nil {
		s += fmt.Sprintf("bytes=%d", *r.MaxTotalBytes)
	}
	return s
}

// TestIndexNoticesRewrite: a file rewritten in place (same inode, same
// size or larger) is indexed again, not trusted.
func TestIndexNoticesRewrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	a := bytes.Repeat([]byte(`{"kind":"event","timestamp":1.0}`+"\n"), 100)
	os.WriteFile(path, a, 0o644)
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	defer f.Close()
	var x Index
	if err := x.Update(context.Background(), f, int64(len(a))); err != nil {
		t.Fatal(err)
	}
	if x.Records() != 100 {
		t.Fatalf("%d records", x.Records())
	}
	b := bytes.Repeat([]byte(`not json, same length, 33 bytes!`+"\n"), 100)
	f.WriteAt(b, 0)
	if err := x.Update(context.Background(), f, int64(len(b))); err != nil {
		t.Fatal(err)
	}
	if x.Records() != 0 {
		t.Fatalf("%d records after the rewrite: the stale index was kept", x.Records())
	}
}
