package main

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/ingest"
	"github.com/fieldhub/fieldhub/registry"
)

func newDeadLetterCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "deadletter", Aliases: []string{"deadletters"}, Short: "List and replay rejected messages"}
	var device, reason string
	var all bool
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List dead letters as JSON (not yet replayed ones unless --all)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withRegistry(cmd, func(reg *registry.Registry) error {
				dls, err := reg.DeadLetters(cmd.Context(), registry.DeadLetterFilter{Device: device, Reason: reason, IncludeReplayed: all, Limit: limit})
				if err != nil {
					return err
				}
				out := make([]dashboard.DeadLetter, 0, len(dls))
				for _, d := range dls {
					out = append(out, dashboard.FromDeadLetter(d))
				}
				return writeJSONOut(a, out)
			})
		},
	}
	list.Flags().StringVar(&device, "device", "", "only this device's")
	list.Flags().StringVar(&reason, "reason", "", "only this reason (bad_payload, wrong_type, out_of_range, unknown_metric, too_old, too_new)")
	list.Flags().BoolVar(&all, "all", false, "include replayed ones")
	list.Flags().IntVar(&limit, "limit", 1000, "at most this many")

	replay := &cobra.Command{
		Use:   "replay ID...",
		Short: "Validate dead letters again with today's schema and store those that pass",
		Long: `Replay dead letters: each is decoded and validated again (after a schema
change, say); those that pass are stored and marked replayed. Exits 1 if any
is still invalid.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ids := make([]int64, len(args))
			for i, s := range args {
				id, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					return fmt.Errorf("%q is not a dead letter id", s)
				}
				ids[i] = id
			}
			cfg, err := a.config()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			failed := 0
			one := func(id int64, err error) error {
				if err == nil {
					fmt.Fprintf(a.stdout, "%d replayed\n", id)
					return nil
				}
				failed++
				fmt.Fprintf(a.stdout, "%d not replayed: %v\n", id, err)
				return nil
			}
			if api, err := runningHub(ctx, cfg); err == nil {
				for _, id := range ids {
					one(id, api.do(ctx, "POST", fmt.Sprintf("/api/v1/deadletters/%d/replay", id), nil, nil))
				}
			} else if !errors.Is(err, errNoHub) {
				return err
			} else if err := a.withLocalPipeline(cmd, cfg, func(p *ingest.Pipeline) error {
				for _, id := range ids {
					one(id, p.Replay(ctx, id))
				}
				return nil
			}); err != nil {
				return err
			}
			if failed > 0 {
				return exitError(1)
			}
			return nil
		},
	}
	c.AddCommand(list, replay)
	return c
}
