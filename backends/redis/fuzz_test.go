package redis

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/backends/ndjson"
	"github.com/papyra/watcher/internal/testutil"
)

// anomalyTypes are the Anomaly* constants: the only types a scan may report.
var anomalyTypes = map[string]bool{
	backends.AnomalyInvalidLine: true, backends.AnomalyPartialLine: true, backends.AnomalyMissingTimestamp: true,
	backends.AnomalyUnknownKind: true, backends.AnomalyOrphanFile: true, backends.AnomalyLeftover: true,
	backends.AnomalyMissingData: true, backends.AnomalyUnreadable: true,
}

// oracleKind decodes data with encoding/json (numbers kept as text) and
// returns its top-level "kind" when data is standard JSON; decided is false
// when encoding/json cannot say (not standard JSON: NaN, Infinity, ...).
func oracleKind(data []byte) (kind string, isString, decided bool) {
	if !json.Valid(data) {
		return "", false, false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return "", false, false
	}
	s, ok := m["kind"].(string)
	return s, ok, true
}

// FuzzRedisEntryScan writes one stream entry with arbitrary fields (one or
// two field/value pairs, possibly without "data", with arbitrary bytes) to
// a real Redis under a private prefix, exactly as a foreign or broken
// writer could, and runs the redis backend's Scan, Stat and a dry-run
// Compact under a size limit (the path that estimates entry sizes) over it.
// Nothing may panic or fail, and the scan must classify the entry exactly
// as an independent oracle does: missing_data when there is no data field;
// otherwise invalid_line when data is not a JSON object (ClassifyLine,
// fuzzed on its own by FuzzClassifyLine), else missing_timestamp and
// unknown_kind as the record says (kind checked against encoding/json).
// Every anomaly is well-formed: a known type, the target's name, the
// stream's key as path, and a detail naming the entry id.
func FuzzRedisEntryScan(f *testing.F) {
	f.Add("data", []byte(`{"kind": "event", "system_id": "local", "actor_address": "a", "event_type": "E", "payload": {}, "timestamp": 1795599998.0}`), "", []byte(nil), uint8(0))
	f.Add("data", []byte(`{"kind": "audit", "timestamp": 1}`), "extra", []byte("x"), uint8(1))
	f.Add("data", []byte(`{"kind": "dead_letter", "target": null, "payload": [1,2], "timestamp": NaN}`), "", []byte(nil), uint8(2))
	f.Add("payload", []byte(`{"kind": "event"}`), "", []byte(nil), uint8(0))
	f.Add("data", []byte(`not json`), "", []byte(nil), uint8(0))
	f.Add("data", []byte(`[1,2,3]`), "", []byte(nil), uint8(0))
	f.Add("data", []byte(``), "", []byte(nil), uint8(0))
	f.Add("data", []byte(`{"kind": "future_kind", "timestamp": 5}`), "", []byte(nil), uint8(0))
	f.Add("data", []byte(`{"kind": 7, "timestamp": "yesterday"}`), "", []byte(nil), uint8(0))
	f.Add("data", []byte(`{"kind":"event","timestamp":1}`), "data", []byte(`{"kind":"audit"}`), uint8(0))
	f.Add("\xff\xfe", []byte("\x00\x01"), "data", []byte("{\"kind\":\"event\",\n\"timestamp\":1e400}"), uint8(1))
	// Records as Papyra stored them (testdata/papyra: inputs of the json
	// golden cases).
	for _, name := range []string{"unicode", "corrupt_lines", "timestamp_missing_or_bad", "age"} {
		data, err := os.ReadFile(filepath.Join("testdata", "papyra", name+".ndjson"))
		if err != nil {
			f.Fatalf("seed fixture %s: %v", name, err)
		}
		for i, line := range bytes.Split(data, []byte("\n")) {
			if i >= 6 {
				break
			}
			f.Add("data", line, "", []byte(nil), uint8(i))
		}
	}

	url := testutil.SharedRedis(f)
	prefix := testutil.UniquePrefix(f, url)
	b, err := New(Config{Name: "fuzz", URL: url, Prefix: prefix, Node: "fuzz-node"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { b.Close() })
	opts, err := goredis.ParseURL(url)
	if err != nil {
		f.Fatal(err)
	}
	c := goredis.NewClient(opts)
	f.Cleanup(func() { c.Close() })
	keys := b.Streams()

	f.Fuzz(func(t *testing.T, field1 string, value1 []byte, field2 string, value2 []byte, stream uint8) {
		ctx := context.Background()
		key := keys[int(stream)%len(keys)]
		values := []any{field1, value1}
		if field2 != "" || len(value2) > 0 {
			values = append(values, field2, value2)
		}
		defer c.Del(ctx, keys...)
		id, err := c.XAdd(ctx, &goredis.XAddArgs{Stream: key, Values: values}).Result()
		if err != nil {
			t.Fatalf("XADD: %v", err)
		}

		anomalies, err := b.Scan(ctx)
		if err != nil {
			t.Fatalf("Scan: %v", err)
		}
		byType := map[string]int{}
		for _, a := range anomalies {
			if !anomalyTypes[a.Type] {
				t.Fatalf("anomaly of unknown type: %+v", a)
			}
			if a.Target != "fuzz" || a.Path != key || !strings.Contains(a.Detail, id) {
				t.Fatalf("ill-formed anomaly (want target fuzz, path %s, detail naming %s): %+v", key, id, a)
			}
			if _, err := json.Marshal(a); err != nil {
				t.Fatalf("anomaly does not marshal: %v", err)
			}
			byType[a.Type]++
		}

		// The oracle. Redis keeps the last value of a repeated field.
		var data []byte
		hasData := false
		if field1 == "data" {
			data, hasData = value1, true
		}
		if len(values) == 4 && field2 == "data" {
			data, hasData = value2, true
		}
		want := map[string]int{}
		switch info := ndjson.ClassifyLine(data); {
		case !hasData:
			want[backends.AnomalyMissingData] = 1
		case !info.Record:
			want[backends.AnomalyInvalidLine] = 1
		default:
			if !info.HasTimestamp {
				want[backends.AnomalyMissingTimestamp] = 1
			}
			kind, isString, decided := oracleKind(data)
			if !decided {
				// Not standard JSON (NaN, ...): the kind is not checked
				// against the oracle; at most one anomaly about it.
				want[backends.AnomalyUnknownKind] = min(byType[backends.AnomalyUnknownKind], 1)
			} else if !isString || (kind != "event" && kind != "audit" && kind != "dead_letter") {
				want[backends.AnomalyUnknownKind] = 1
			}
		}
		for typ := range anomalyTypes {
			if byType[typ] != want[typ] {
				t.Fatalf("entry %v: scan found %v, want %v (anomalies %+v)", values, byType, want, anomalies)
			}
		}

		st, err := b.Stat(ctx)
		if err != nil {
			t.Fatalf("Stat: %v", err)
		}
		if st.Bytes < -1 {
			t.Fatalf("Stat: bytes %d", st.Bytes)
		}
		rep, err := b.Compact(ctx, backends.CompactOptions{DryRun: true, Now: fixedNow,
			Retention: backends.Retention{MaxTotalBytes: i64(1), MaxRecords: i64(5)}})
		if err != nil {
			t.Fatalf("dry-run Compact: %v", err)
		}
		if rep.BeforeRecords != 1 || rep.AfterRecords < 0 || rep.AfterRecords > rep.BeforeRecords || !rep.DryRun || rep.Error != "" {
			t.Fatalf("dry-run report over one entry: %+v", rep)
		}
		if n, err := c.XLen(ctx, key).Result(); err != nil || n != 1 {
			t.Fatalf("dry run changed the stream: XLEN %d, %v", n, err)
		}
	})
}
