package ndjson

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/papyra/watcher/backends"
)

func TestFiller(t *testing.T) {
	for _, n := range []int{2, 3, 17, 4095} {
		f := Filler(n)
		if len(f) != n || !IsFiller(f) {
			t.Fatalf("Filler(%d) = %q: wrong length or not recognised", n, f)
		}
		var v any
		if err := json.Unmarshal(f[:n-1], &v); err != nil {
			t.Fatalf("Filler(%d) is not JSON: %v", n, err)
		}
		if _, isObject := v.(map[string]any); isObject {
			t.Fatalf("Filler(%d) is an object: Papyra's reader would return it", n)
		}
		if ClassifyLine(f[:n-1]).Record {
			t.Fatalf("Filler(%d) classified as a record", n)
		}
	}
	for _, s := range []string{"", "\n", " \n", "0", " 0", "00\n", " 1\n", "\t0\n", "{}\n"} {
		if IsFiller([]byte(s)) {
			t.Errorf("IsFiller(%q) = true", s)
		}
	}
}

// TestScanAcceptsLeadingFiller: a filler line first in a file is not an
// anomaly; anywhere else it is an invalid line.
func TestScanAcceptsLeadingFiller(t *testing.T) {
	rec := `{"kind": "event", "system_id": "s", "timestamp": 1.0}` + "\n"
	for _, c := range []struct {
		data    string
		invalid int
	}{
		{string(Filler(9)) + rec, 0},
		{rec + string(Filler(9)) + rec, 1},
		{string(Filler(9)) + string(Filler(9)) + rec, 1},
	} {
		path := filepath.Join(t.TempDir(), "f")
		os.WriteFile(path, []byte(c.data), 0o644)
		f, _ := os.Open(path)
		a := NewAnomalies("t")
		if err := ScanLines(context.Background(), a, f, path); err != nil {
			t.Fatal(err)
		}
		f.Close()
		n := 0
		for _, an := range a.Result() {
			if an.Type == backends.AnomalyInvalidLine {
				n++
			}
		}
		if n != c.invalid {
			t.Errorf("%q: %d invalid lines reported, want %d", c.data, n, c.invalid)
		}
	}
}
