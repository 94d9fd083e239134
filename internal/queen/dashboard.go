package queen

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// dashboardFiles is the web dashboard: static files, no build step. The
// page itself is public; every data call it makes needs a key when the
// queen has keys.
//
//go:embed dashboard
var dashboardFiles embed.FS

// dashboardPrefix is where the dashboard's assets are served; the page
// itself is at /.
const dashboardPrefix = "/ui/"

// dashboardCSP keeps the page to its own origin: no CDN, no inline script.
const dashboardCSP = "default-src 'self'; connect-src 'self'; img-src 'self' data:; " +
	"frame-ancestors 'none'"

// isDashboardPath reports whether path is the dashboard page or an asset.
func isDashboardPath(path string) bool {
	return path == "/" || strings.HasPrefix(path, dashboardPrefix) && !strings.Contains(path, "..")
}

// dashboardHandler serves index.html at / and the assets under /ui/.
func dashboardHandler() http.Handler {
	files, err := fs.Sub(dashboardFiles, "dashboard")
	if err != nil {
		panic(err) // the folder is embedded at build time
	}
	assets := http.StripPrefix(dashboardPrefix, http.FileServerFS(files))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", dashboardCSP)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if r.URL.Path == "/" {
			w.Header().Set("Cache-Control", "no-cache")
			http.ServeFileFS(w, r, files, "index.html")
			return
		}
		assets.ServeHTTP(w, r)
	})
}
