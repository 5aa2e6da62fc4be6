package registry

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
)

// BenchmarkDevicesList lists one page of 100 out of 10,000 devices, from
// the middle of the id range, with and without label filters.
func BenchmarkDevicesList(b *testing.B) {
	ctx := context.Background()
	r := openTest(b)
	const n = 10000
	// Bulk load in one transaction: CreateDevice per device would only
	// measure fsyncs.
	err := r.write(ctx, "bench_load", func(tx *sql.Tx) error {
		for i := 0; i < n; i++ {
			id := fmt.Sprintf("dev-%05d", i)
			if _, err := tx.ExecContext(ctx, "INSERT INTO devices (id, type, created_at, online) VALUES (?, ?, ?, ?)",
				id, []string{"sensor", "pump", "gateway"}[i%3], int64(i), i%4 == 0); err != nil {
				return err
			}
			labels := map[string]string{
				"site":  fmt.Sprintf("site-%02d", i%50),   // 2% of devices each
				"fleet": fmt.Sprintf("fleet-%d", i%2),     // 50% each
				"rack":  fmt.Sprintf("rack-%04d", i%1000), // 0.1% each
			}
			if err := insertLabels(ctx, tx, id, labels); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	yes := true
	cases := []struct {
		name string
		f    DeviceFilter
		want int
	}{
		{"no_filter", DeviceFilter{After: "dev-05000", Limit: 100}, 100},
		{"label_50pct", DeviceFilter{After: "dev-05000", Labels: map[string]string{"fleet": "fleet-1"}, Limit: 100}, 100},
		{"label_2pct", DeviceFilter{Labels: map[string]string{"site": "site-07"}, Limit: 100}, 100},
		{"label_0.1pct", DeviceFilter{Labels: map[string]string{"rack": "rack-0042"}, Limit: 100}, 10},
		{"type_online_label", DeviceFilter{Type: "pump", Online: &yes, Labels: map[string]string{"fleet": "fleet-0"}, Limit: 100}, 100},
		{"search", DeviceFilter{Search: "dev-09", Limit: 100}, 100},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				devs, err := r.Devices(ctx, c.f)
				if err != nil {
					b.Fatal(err)
				}
				if len(devs) != c.want {
					b.Fatalf("%d devices, want %d", len(devs), c.want)
				}
			}
		})
	}
}
