package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fieldhub/fieldhub/registry"
)

// withRegistry runs fn with the registry of the configured data_dir open.
// SQLite in WAL mode lets this run while `fieldhub serve` has the same file
// open.
func (a *app) withRegistry(cmd *cobra.Command, fn func(reg *registry.Registry) error) error {
	cfg, err := a.config()
	if err != nil {
		return err
	}
	reg, err := registry.Open(cmd.Context(), filepath.Join(cfg.DataDir, "registry.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	defer reg.Close()
	return fn(reg)
}

func newDeviceCmd(a *app) *cobra.Command {
	c := &cobra.Command{Use: "device", Short: "Manage devices and their tokens"}

	var typ string
	var labels []string
	add := &cobra.Command{
		Use:   "add ID",
		Short: "Add a device; prints its new token (shown once) on stdout",
		Long: `Add a device. Its id is 1-128 characters of letters, digits, '-', '_', '.'
and ':', not starting with '.'. The device connects with client id and
username = ID and password = the printed token. The token is shown only
now; it is stored as a hash.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			lm := map[string]string{}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return fmt.Errorf("--label %q: want key=value", l)
				}
				lm[k] = v
			}
			return a.withRegistry(cmd, func(reg *registry.Registry) error {
				_, tok, err := reg.CreateDevice(cmd.Context(), registry.DeviceSpec{ID: args[0], Type: typ, Labels: lm})
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, tok)
				return nil
			})
		},
	}
	add.Flags().StringVar(&typ, "type", "", "device type (see configs/device-types.yaml)")
	add.Flags().StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")

	var asJSON bool
	var ltype string
	list := &cobra.Command{
		Use:   "list",
		Short: "List devices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withRegistry(cmd, func(reg *registry.Registry) error {
				var all []registry.Device
				f := registry.DeviceFilter{Type: ltype, Limit: 1000}
				for {
					page, err := reg.Devices(cmd.Context(), f)
					if err != nil {
						return err
					}
					all = append(all, page...)
					if len(page) < f.Limit {
						break
					}
					f.After = page[len(page)-1].ID
				}
				if asJSON {
					return writeJSONOut(a, all)
				}
				tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tTYPE\tONLINE\tLAST SEEN\tLABELS")
				for _, d := range all {
					fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\n", d.ID, d.Type, d.Online, fmtTime(d.LastSeen), fmtLabels(d.Labels))
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	list.Flags().StringVar(&ltype, "type", "", "only devices of this type")

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one device as JSON",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withRegistry(cmd, func(reg *registry.Registry) error {
				d, err := reg.Device(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				return writeJSONOut(a, d)
			})
		},
	}
	rm := &cobra.Command{
		Use:   "rm ID",
		Short: "Remove a device and its token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withRegistry(cmd, func(reg *registry.Registry) error {
				return reg.DeleteDevice(cmd.Context(), args[0])
			})
		},
	}
	rotate := &cobra.Command{
		Use:   "rotate-token ID",
		Short: "Replace a device's token; prints the new one, the old one stops working",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withRegistry(cmd, func(reg *registry.Registry) error {
				tok, err := reg.RotateDeviceToken(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				fmt.Fprintln(a.stdout, tok)
				return nil
			})
		},
	}
	c.AddCommand(add, list, show, rm, rotate)
	return c
}

func writeJSONOut(a *app, v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func fmtLabels(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}
