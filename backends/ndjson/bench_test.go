package ndjson

import "testing"

func BenchmarkClassifyLine(b *testing.B) {
	line := []byte(`{"kind": "event", "system_id": "local", "actor_address": "local://worker/3", "event_type": "ActorStarted", "payload": {"seq": 12345, "note": "hello", "timestamp": 5}, "timestamp": 1795599998.25}`)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		ClassifyLine(line)
	}
}
