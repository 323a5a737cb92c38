package backends

import (
	"testing"
	"time"
)

func BenchmarkCut(b *testing.B) {
	age := 3600.0
	r := Retention{MaxAgeSeconds: &age, MaxTotalBytes: Int64(1 << 62)}
	info := LineInfo{Record: true, HasTimestamp: true, Timestamp: 1795599998}
	b.ReportAllocs()
	c := r.NewCut(time.Unix(1795600000, 0))
	for b.Loop() {
		c.Offer(info, 190)
	}
}
