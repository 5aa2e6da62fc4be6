package main

import (
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/store"
)

func newTelemetryCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "telemetry", Short: "Read stored telemetry (JSON output)"}
	latest := &cobra.Command{
		Use:   "latest ID",
		Short: "Print the newest value of each metric of a device",
		Long:  `Print a JSON array with one object per metric: {"metric", "ts" (unix ms), "value"}.`,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.config()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var out []dashboard.LatestSample
			if api, err := runningHub(ctx, cfg); err == nil {
				if err := api.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(args[0])+"/telemetry/latest", nil, &out); err != nil {
					return err
				}
			} else if err != errNoHub {
				return err
			} else {
				st, _, err := openLocalStore(ctx, cfg)
				if err != nil {
					return err
				}
				defer st.Close()
				samples, err := st.Latest(ctx, args[0])
				if err != nil {
					return err
				}
				out = []dashboard.LatestSample{}
				for _, s := range samples {
					out = append(out, dashboard.LatestSample{Metric: s.Metric, TS: s.TS, Value: s.Value})
				}
			}
			return writeJSONOut(a, out)
		},
	}

	var from, to, agg string
	var step time.Duration
	query := &cobra.Command{
		Use:   "query ID METRIC",
		Short: "Print one metric's samples over a time range",
		Long: `Print a JSON array with one object per sample: {"ts" (unix ms), "value"}.
--from and --to take unix ms, RFC 3339 or a duration ago ("1h"). With --step
the range is cut into buckets reduced with --agg (avg, min, max, last).`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.config()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			now := time.Now()
			q := store.SeriesQuery{Device: args[0], Metric: args[1], Step: step}
			if q.From, err = dashboard.ParseTime(from, now); err != nil {
				return err
			}
			if q.To, err = dashboard.ParseTime(to, now); err != nil {
				return err
			}
			if q.Agg, err = store.ParseAgg(agg); err != nil {
				return err
			}
			var out []store.Point
			if api, err := runningHub(ctx, cfg); err == nil {
				v := url.Values{"from": {from}, "to": {to}, "agg": {string(q.Agg)}}
				if step > 0 {
					v.Set("step", step.String())
				}
				if err := api.do(ctx, "GET", "/api/v1/devices/"+url.PathEscape(args[0])+"/telemetry/"+url.PathEscape(args[1]), v, &out); err != nil {
					return err
				}
			} else if err != errNoHub {
				return err
			} else {
				st, _, err := openLocalStore(ctx, cfg)
				if err != nil {
					return err
				}
				defer st.Close()
				if out, err = st.Series(ctx, q); err != nil {
					return err
				}
			}
			if out == nil {
				out = []store.Point{}
			}
			return writeJSONOut(a, out)
		},
	}
	query.Flags().StringVar(&from, "from", "1h", "start: unix ms, RFC 3339, or a duration ago")
	query.Flags().StringVar(&to, "to", "0s", "end (inclusive): unix ms, RFC 3339, or a duration ago")
	query.Flags().DurationVar(&step, "step", 0, "bucket size (0: raw samples)")
	query.Flags().StringVar(&agg, "agg", "avg", "bucket aggregation: avg, min, max, last")
	c.AddCommand(latest, query)
	return c
}
