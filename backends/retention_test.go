package backends

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

func TestCutOrder(t *testing.T) {
	rec := func(ts float64) LineInfo { return LineInfo{Record: true, HasTimestamp: true, Timestamp: ts} }
	now := time.Unix(1000, 0)
	age := 100.0
	r := Retention{MaxAgeSeconds: &age, MaxRecords: Int64(2), MaxTotalBytes: Int64(25)}
	c := r.NewCut(now)
	steps := []struct {
		info LineInfo
		size int64
		want DropReason
	}{
		{LineInfo{}, 5, DropInvalid},                 // not a record
		{LineInfo{Record: true}, 5, DropNoTimestamp}, // no timestamp under an age limit
		{rec(899), 5, DropAge},                       // too old (not monotonic: newer ones follow)
		{rec(950), 10, Kept},                         //
		{rec(math.NaN()), 10, Kept},                  // NaN < cutoff is false, as in Python
		{rec(990), 10, DropCount},                    // count reached: done
		{rec(999), 1, DropCount},                     // everything older too
		{LineInfo{}, 1, DropInvalid},                 // an invalid line is still invalid
	}
	for i, s := range steps {
		if got := c.Offer(s.info, s.size); got != s.want {
			t.Fatalf("step %d: %v, want %v", i, got, s.want)
		}
	}
	if !c.Done() || c.DoneReason() != DropCount || c.Kept() != 2 || c.KeptBytes() != 20 {
		t.Fatalf("cut %+v", c)
	}
}

func TestCutBytesStopsAtFirstMisfit(t *testing.T) {
	c := Retention{MaxTotalBytes: Int64(10)}.NewCut(time.Now())
	rec := LineInfo{Record: true}
	if c.Offer(rec, 6) != Kept || c.Offer(rec, 5) != DropBytes || c.Offer(rec, 1) != DropBytes {
		t.Fatal("a smaller older record must not be kept after the first misfit")
	}
	if c.DoneReason() != DropBytes {
		t.Fatal(c.DoneReason())
	}
}

func TestCutZeroLimits(t *testing.T) {
	for _, r := range []Retention{{MaxRecords: Int64(0)}, {MaxTotalBytes: Int64(0)}} {
		c := r.NewCut(time.Now())
		if c.Offer(LineInfo{Record: true}, 1) == Kept || !c.Done() {
			t.Fatalf("%+v kept a record", r)
		}
	}
	c := Retention{}.NewCut(time.Now())
	for range 1000 {
		if c.Offer(LineInfo{Record: true}, 100) != Kept {
			t.Fatal("no limit dropped a record")
		}
	}
	if c.Done() {
		t.Fatal("no limit finished")
	}
}

func TestRetentionValidate(t *testing.T) {
	neg := -1.0
	nan := math.NaN()
	for _, r := range []Retention{{MaxRecords: Int64(-1)}, {MaxTotalBytes: Int64(-5)}, {MaxAgeSeconds: &neg}, {MaxAgeSeconds: &nan}} {
		if r.Validate() == nil {
			t.Errorf("%s accepted", fmtRetention(r))
		}
	}
	if (Retention{}).Validate() != nil || !(Retention{}).IsZero() {
		t.Fatal("zero retention")
	}
}

func TestUnixSeconds(t *testing.T) {
	if got := UnixSeconds(time.Unix(1795600000, 500000000)); got != 1795600000.5 {
		t.Fatal(got)
	}
}

func TestDroppedAdd(t *testing.T) {
	var d Dropped
	for _, r := range []DropReason{Kept, DropInvalid, DropNoTimestamp, DropAge, DropCount, DropBytes} {
		d.Add(r)
	}
	if d != (Dropped{Age: 1, Count: 1, Bytes: 1, NoTimestamp: 1, Invalid: 1}) {
		t.Fatalf("%+v", d)
	}
}

// fmtRetention shows r for a test message.
func fmtRetention(r Retention) string {
	s := ""
	if r.MaxAgeSeconds != nil {
		s += fmt.Sprintf("age=%v ", *r.MaxAgeSeconds)
	}
	if r.MaxRecords != nil {
		s += fmt.Sprintf("records=%d ", *r.MaxRecords)
	}
	if r.MaxTotalBytes != nil {
		s += fmt.Sprintf("bytes=%d ", *r.MaxTotalBytes)
	}
	return "{" + strings.TrimSpace(s) + "}"
}
