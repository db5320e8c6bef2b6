package k8s

import (
	"fmt"
	"maps"
	"net"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
	"github.com/asyncmesh/asyncmesh/controlplane/xds"
)

const (
	chartDir    = "chart/asyncmesh"
	releaseName = "am"
	namespace   = "shop"
)

// variants are the chart's values files: the defaults and each ci/ file.
var variants = []struct {
	name, values, mode string
}{
	{"sidecar embedded (defaults)", "", "sidecar"},
	{"sidecar rabbitmq+elasticsearch", "ci/backends-values.yaml", "sidecar"},
	{"istio", "ci/istio-values.yaml", "istio"},
	{"istio wasm api", "ci/istio-wasm-api-values.yaml", "istio"},
	{"envoy-gateway", "ci/envoy-gateway-values.yaml", "envoy-gateway"},
	{"envoy-gateway wasm api", "ci/envoy-gateway-wasm-api-values.yaml", "envoy-gateway"},
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	return ch
}

// renderChart renders the chart as helm install would (Helm's engine, in
// strict mode: a missing value is an error), with a values file and then
// overrides on top, and returns the documents of every template.
func renderChart(ch *chart.Chart, valuesFile string, overrides map[string]any) (string, map[string]any, error) {
	vals := map[string]any{}
	if valuesFile != "" {
		v, err := chartutil.ReadValuesFile(filepath.Join(chartDir, valuesFile))
		if err != nil {
			return "", nil, err
		}
		vals = v
	}
	vals = chartutil.CoalesceTables(overrides, vals)
	rv, err := chartutil.ToRenderValues(ch, vals, chartutil.ReleaseOptions{Name: releaseName, Namespace: namespace, IsInstall: true, Revision: 1}, chartutil.DefaultCapabilities)
	if err != nil {
		return "", nil, fmt.Errorf("values: %w", err)
	}
	out, err := engine.Engine{Strict: true}.Render(ch, rv)
	if err != nil {
		return "", nil, err
	}
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(out)) {
		if strings.HasSuffix(name, ".yaml") {
			fmt.Fprintf(&b, "---\n# %s\n%s\n", name, out[name])
		}
	}
	merged, _ := rv["Values"].(chartutil.Values)
	return b.String(), merged, nil
}

// TestChartVariants renders every values variant and checks each document
// against its real type, then what the types cannot say.
func TestChartVariants(t *testing.T) {
	ch := loadChart(t)
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			src, vals, err := renderChart(ch, v.values, nil)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := decodeStream(src)
			if err != nil {
				t.Fatal(err)
			}
			kinds := map[string]int{}
			for _, o := range objs {
				kinds[o.kind]++
			}
			want := map[string]map[string]int{
				"sidecar":       {"ConfigMap": 1, "Deployment": 2, "Service": 2, "NetworkPolicy": 1}, // + the control plane's
				"istio":         {"ConfigMap": 1, "Deployment": 1, "Service": 1},
				"envoy-gateway": {"ConfigMap": 1, "Deployment": 1, "Service": 1, "NetworkPolicy": 1, "EnvoyProxy": 1}, // the collector's, the gateway's Envoy
			}[v.mode]
			if !maps.Equal(kinds, want) {
				t.Fatalf("rendered %v, want %v", kinds, want)
			}
			rules := rulesOf(t, objs)
			deployments := byKind[*appsv1.Deployment](objs)
			for _, d := range deployments {
				checkSelectors(t, d)
				checkProbesReachable(t, d)
				checkRulesMounts(t, d)
			}
			checkServices(t, byKind[*corev1.Service](objs), deployments)
			collectorPod := podWith(t, deployments, "collector")
			checkSecretSources(t, rules, collectorPod)
			checkReplaySecret(t, rules, collectorPod, objs, v.mode)
			checkRetention(t, collectorPod)
			switch v.mode {
			case "sidecar":
				checkSidecarWiring(t, collectorPod, objs)
				checkXDSPolicy(t, objs, collectorPod)
			case "envoy-gateway":
				checkIntakePolicy(t, objs, collectorPod)
			case "istio":
				if l := collectorPod.Labels["sidecar.istio.io/inject"]; l != "true" {
					t.Errorf("istio mode: pod label sidecar.istio.io/inject=%q", l)
				}
			}
			if v.mode != "sidecar" {
				checkMeshModule(t, objs, v.mode, chartValue(t, vals, "meshWasmAPI") == true)
			}
		})
	}
}

// rulesOf parses the rules ConfigMap as the control plane and collector do.
func rulesOf(t *testing.T, objs []object) *rulesfile.File {
	t.Helper()
	for _, cm := range byKind[*corev1.ConfigMap](objs) {
		if cm.Name == releaseName+"-rules" {
			f, err := rulesfile.Parse(cm.Name+"/rules.yaml", []byte(cm.Data["rules.yaml"]))
			if err != nil {
				t.Fatalf("the chart's rules: %v", err)
			}
			return f
		}
	}
	t.Fatal("no rules ConfigMap")
	return nil
}

func checkSelectors(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	for k, v := range d.Spec.Selector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("Deployment %s: selector %s=%s does not select its own pods (%v)", d.Name, k, v, d.Spec.Template.Labels)
		}
	}
}

// checkServices: every Service selects some Deployment's pods, on a port
// one of their containers names.
func checkServices(t *testing.T, svcs []*corev1.Service, ds []*appsv1.Deployment) {
	t.Helper()
	for _, s := range svcs {
		var pod *corev1.PodTemplateSpec
		for _, d := range ds {
			if selects(s.Spec.Selector, d.Spec.Template.Labels) {
				pod = &d.Spec.Template
			}
		}
		if pod == nil {
			t.Errorf("Service %s selects no rendered pods", s.Name)
			continue
		}
		for _, p := range s.Spec.Ports {
			if _, ok := containerPort(pod.Spec, p.TargetPort); !ok {
				t.Errorf("Service %s: targetPort %s is no container's port", s.Name, p.TargetPort.String())
			}
		}
	}
}

func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// containerPort resolves a named or numbered port of the pod's containers.
func containerPort(pod corev1.PodSpec, p intstr.IntOrString) (int32, bool) {
	for _, c := range pod.Containers {
		for _, cp := range c.Ports {
			if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

// asyncmeshContainers are the containers the chart adds to a pod.
var asyncmeshContainers = map[string]bool{"collector": true, "envoy": true, "controlplane": true}

// checkProbesReachable: the kubelet probes the pod's address, so every
// probe of an asyncmesh container must name a port some process binds on
// 0.0.0.0 (a flag -x=0.0.0.0:PORT of the pod's containers or init
// containers), not on loopback, where the probe would always fail.
func checkProbesReachable(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	spec := d.Spec.Template.Spec
	bound := map[int32]string{}
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		for _, a := range c.Args {
			_, val, ok := strings.Cut(a, "=")
			if !ok {
				continue
			}
			host, port, err := net.SplitHostPort(val)
			if err != nil {
				continue
			}
			n, err := strconv.Atoi(port)
			if err != nil {
				continue
			}
			if _, seen := bound[int32(n)]; !seen || host == "0.0.0.0" {
				bound[int32(n)] = host
			}
		}
	}
	probed := 0
	for _, c := range spec.Containers {
		for _, pr := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
			if pr == nil || !asyncmeshContainers[c.Name] {
				continue // the service's own probes are its own business
			}
			var p intstr.IntOrString
			switch {
			case pr.HTTPGet != nil:
				p = pr.HTTPGet.Port
			case pr.TCPSocket != nil:
				p = pr.TCPSocket.Port
			default:
				t.Errorf("%s/%s: a probe that is neither httpGet nor tcpSocket", d.Name, c.Name)
				continue
			}
			n, ok := containerPort(spec, p)
			if !ok {
				t.Errorf("%s/%s: probe port %s is no container's port", d.Name, c.Name, p.String())
				continue
			}
			if host := bound[n]; host != "0.0.0.0" {
				t.Errorf("%s/%s: probe port %d is bound on %q, not 0.0.0.0: the kubelet cannot reach it", d.Name, c.Name, n, host)
			}
			probed++
		}
	}
	if probed == 0 {
		t.Errorf("Deployment %s: no asyncmesh container has a probe", d.Name)
	}
}

// checkRulesMounts: the rules ConfigMap is mounted as a directory. A
// subPath mount is never updated by the kubelet, so the control plane's
// live reload would silently stop.
func checkRulesMounts(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	spec := d.Spec.Template.Spec
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		for _, m := range c.VolumeMounts {
			if m.Name == "rules" && m.SubPath != "" {
				t.Errorf("%s/%s mounts the rules with subPath %q", d.Name, c.Name, m.SubPath)
			}
		}
	}
}

func podWith(t *testing.T, ds []*appsv1.Deployment, container string) *corev1.PodTemplateSpec {
	t.Helper()
	for _, d := range ds {
		if _, ok := findContainer(d.Spec.Template.Spec.Containers, container); ok {
			return &d.Spec.Template
		}
	}
	t.Fatalf("no Deployment runs a %s container", container)
	return nil
}

func findContainer(cs []corev1.Container, name string) (corev1.Container, bool) {
	i := slices.IndexFunc(cs, func(c corev1.Container) bool { return c.Name == name })
	if i < 0 {
		return corev1.Container{}, false
	}
	return cs[i], true
}

func envFromSecret(c corev1.Container, name string) (*corev1.SecretKeySelector, bool) {
	return envFromSecretVars(c.Env, name)
}

func envFromSecretVars(vars []corev1.EnvVar, name string) (*corev1.SecretKeySelector, bool) {
	for _, e := range vars {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			return e.ValueFrom.SecretKeyRef, true
		}
	}
	return nil, false
}

// checkSecretSources: every secret the rules declare is where the
// collector will look: an env: declaration is an environment variable of
// the collector from a Secret; a file: declaration is a file of a Secret
// volume mounted (as a directory, so rotations reach it) in the collector.
func checkSecretSources(t *testing.T, f *rulesfile.File, pod *corev1.PodTemplateSpec) {
	t.Helper()
	collector, _ := findContainer(pod.Spec.Containers, "collector")
	secretVolumes := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		if v.Secret != nil {
			secretVolumes[v.Name] = true
		}
	}
	for name, s := range f.Secrets {
		switch {
		case s.Env != "":
			if _, ok := envFromSecret(collector, s.Env); !ok {
				t.Errorf("secret %q: the collector has no %s from a Secret", name, s.Env)
			}
		case s.File != "":
			ok := false
			for _, m := range collector.VolumeMounts {
				if secretVolumes[m.Name] && m.SubPath == "" && strings.HasPrefix(s.File, m.MountPath+"/") && !strings.Contains(strings.TrimPrefix(s.File, m.MountPath+"/"), "/") {
					ok = true
				}
			}
			if !ok {
				t.Errorf("secret %q: %s is not a key of a Secret mounted in the collector", name, s.File)
			}
		}
	}
}

// checkReplaySecret: the filter (Envoy's, Istio's proxy's or the gateway's
// Envoy's environment) and the collector read the replay secret from the
// same Secret key, under the names the rules and the collector's flag say.
// (The gateway's Envoy reads the Secret of that name in its own namespace:
// docs/deploy.md says to create it there.)
func checkReplaySecret(t *testing.T, f *rulesfile.File, pod *corev1.PodTemplateSpec, objs []object, mode string) {
	t.Helper()
	env := f.Filter.ReplaySecretEnv
	if env == "" {
		t.Fatal("the chart's rules set no filter.replaySecretEnv: no replay could ever pass")
	}
	collector, _ := findContainer(pod.Spec.Containers, "collector")
	if !slices.Contains(collector.Args, "-replay-secret-env="+env) {
		t.Errorf("collector args %v: want -replay-secret-env=%s", collector.Args, env)
	}
	fromCollector, ok := envFromSecret(collector, env)
	if !ok {
		t.Fatalf("collector: no %s from a Secret", env)
	}
	if mode == "envoy-gateway" {
		c := gatewayEnvoy(t, objs).Container
		if fromProxy, ok := envFromSecretVars(c.Env, env); !ok || *fromProxy != *fromCollector {
			t.Errorf("EnvoyProxy: %s from %v, the collector's from %v", env, fromProxy, fromCollector)
		}
		return
	}
	proxy := map[string]string{"sidecar": "envoy", "istio": "istio-proxy"}[mode]
	c, ok := findContainer(pod.Spec.Containers, proxy)
	if !ok {
		t.Fatalf("no %s container beside the collector", proxy)
	}
	fromProxy, ok := envFromSecret(c, env)
	if !ok || *fromProxy != *fromCollector {
		t.Errorf("%s: %s from %v, the collector's from %v", proxy, env, fromProxy, fromCollector)
	}
}

// checkSidecarWiring: in plain sidecar mode the bootstrap and the collector
// follow the control plane's Service, the control plane tells Envoy the
// filter's path where the pod mounts it, and the collector replays through
// Envoy's listener.
func checkSidecarWiring(t *testing.T, pod *corev1.PodTemplateSpec, objs []object) {
	t.Helper()
	var cp *appsv1.Deployment
	for _, d := range byKind[*appsv1.Deployment](objs) {
		if d.Name == releaseName+"-controlplane" {
			cp = d
		}
	}
	if cp == nil {
		t.Fatal("no control plane Deployment")
	}
	cpc := cp.Spec.Template.Spec.Containers[0]
	xdsAddr := fmt.Sprintf("%s-controlplane:%d", releaseName, cpc.Ports[0].ContainerPort)
	collector, _ := findContainer(pod.Spec.Containers, "collector")
	envoy, _ := findContainer(pod.Spec.Containers, "envoy")
	boot, ok := findContainer(pod.Spec.InitContainers, "bootstrap")
	if !ok {
		t.Fatal("no bootstrap init container")
	}
	for _, c := range []corev1.Container{collector, boot} {
		if !slices.Contains(c.Args, "-xds="+xdsAddr) {
			t.Errorf("%s args %v: want -xds=%s", c.Name, c.Args, xdsAddr)
		}
	}
	wasm := argValue(cpc.Args, "-wasm")
	mounted := false
	for _, m := range envoy.VolumeMounts {
		if m.Name == "filter" && wasm == m.MountPath+"/plugin.wasm" {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("the control plane serves -wasm=%s, which no filter volume mount of Envoy holds (%v)", wasm, envoy.VolumeMounts)
	}
	if i := slices.IndexFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == "filter" }); i < 0 {
		t.Error("no filter volume")
	} else if v := pod.Spec.Volumes[i]; v.Image == nil && v.PersistentVolumeClaim == nil {
		t.Errorf("filter volume %+v: want the filter image (default) or the claim of ci/backends-values.yaml", v.VolumeSource)
	}
	listen := argValue(boot.Args, "-listen")
	_, port, _ := net.SplitHostPort(listen)
	if got, want := argValue(collector.Args, "-replay-url"), "http://127.0.0.1:"+port; got != want {
		t.Errorf("collector -replay-url=%s, want %s (Envoy's listener, whose filter checks replays)", got, want)
	}
	if got, want := argValue(boot.Args, "-collector"), argValue(collector.Args, "-listen"); got != want {
		t.Errorf("Envoy's collector cluster is %s, the collector listens on %s", got, want)
	}
}

// checkXDSPolicy: the NetworkPolicy in front of the control plane admits
// the pods that ask it for rules (the service's: its Envoy and collector)
// on the xDS port, and selects the control plane's pods.
func checkXDSPolicy(t *testing.T, objs []object, clients *corev1.PodTemplateSpec) {
	t.Helper()
	pols := byKind[*networkingv1.NetworkPolicy](objs)
	if len(pols) != 1 {
		t.Fatalf("%d NetworkPolicies", len(pols))
	}
	p := pols[0]
	var cp *appsv1.Deployment
	for _, d := range byKind[*appsv1.Deployment](objs) {
		if selects(p.Spec.PodSelector.MatchLabels, d.Spec.Template.Labels) {
			cp = d
		}
	}
	if cp == nil || cp.Name != releaseName+"-controlplane" {
		t.Fatalf("the NetworkPolicy selects %v, not the control plane", cp)
	}
	xdsPort := intstr.FromString(cp.Spec.Template.Spec.Containers[0].Ports[0].Name)
	admitted := false
	for _, rule := range p.Spec.Ingress {
		for _, from := range rule.From {
			if from.PodSelector == nil || !selects(from.PodSelector.MatchLabels, clients.Labels) {
				continue
			}
			for _, port := range rule.Ports {
				if port.Port != nil && *port.Port == xdsPort {
					admitted = true
				}
			}
		}
	}
	if !admitted {
		t.Errorf("the NetworkPolicy does not admit the service's pods %v to %s", clients.Labels, xdsPort.String())
	}
}

// checkIntakePolicy: in envoy-gateway mode the collector's intake is on
// the network, so a NetworkPolicy selects the collector's pods and admits
// its API port only from selected peers (never from anywhere), while the
// operator port stays reachable for probes.
func checkIntakePolicy(t *testing.T, objs []object, collector *corev1.PodTemplateSpec) {
	t.Helper()
	var pol *networkingv1.NetworkPolicy
	for _, p := range byKind[*networkingv1.NetworkPolicy](objs) {
		if selects(p.Spec.PodSelector.MatchLabels, collector.Labels) {
			pol = p
		}
	}
	if pol == nil {
		t.Fatal("no NetworkPolicy selects the collector's pods")
	}
	api, operator := intstr.FromString("collector"), intstr.FromString("operator")
	apiAdmitted, operatorOpen := false, false
	for _, rule := range pol.Spec.Ingress {
		for _, port := range rule.Ports {
			switch {
			case port.Port == nil:
				t.Errorf("an ingress rule without ports opens every port, the intake's included")
			case *port.Port == api && len(rule.From) == 0:
				t.Errorf("the collector's API is admitted from anywhere")
			case *port.Port == api:
				apiAdmitted = true
			case *port.Port == operator && len(rule.From) == 0:
				operatorOpen = true
			}
		}
	}
	if !apiAdmitted || !operatorOpen {
		t.Errorf("API admitted from the gateway: %v, operator port open for probes: %v", apiAdmitted, operatorOpen)
	}
}

// gatewayEnvoy is the chart's EnvoyProxy's Deployment settings: the
// gateway's Envoy container and pod as Envoy Gateway will run them.
func gatewayEnvoy(t *testing.T, objs []object) *egv1a1.KubernetesDeploymentSpec {
	t.Helper()
	eps := byKind[*egv1a1.EnvoyProxy](objs)
	if len(eps) != 1 {
		t.Fatalf("%d EnvoyProxies, want the chart's one", len(eps))
	}
	ep := eps[0]
	if ep.Name != releaseName+"-proxy" || ep.Spec.Provider == nil || ep.Spec.Provider.Type != egv1a1.EnvoyProxyProviderTypeKubernetes ||
		ep.Spec.Provider.Kubernetes == nil || ep.Spec.Provider.Kubernetes.EnvoyDeployment == nil ||
		ep.Spec.Provider.Kubernetes.EnvoyDeployment.Container == nil {
		t.Fatalf("EnvoyProxy %s sets no Kubernetes Envoy Deployment's container", ep.Name)
	}
	// Merged into the GatewayClass's: a replacement would drop whatever the
	// cluster's operators set there.
	if ep.Spec.MergeType == nil || *ep.Spec.MergeType != egv1a1.StrategicMerge {
		t.Errorf("EnvoyProxy mergeType %v: want StrategicMerge", ep.Spec.MergeType)
	}
	return ep.Spec.Provider.Kubernetes.EnvoyDeployment
}

// meshModule is where, in istio and envoy-gateway modes, the chart mounts
// the filter's module into the proxy's container: the mount, and the pod
// volume it mounts (nil, nil: nothing mounted).
func meshModule(t *testing.T, objs []object, mode string) (*corev1.VolumeMount, *corev1.Volume) {
	t.Helper()
	var mounts []corev1.VolumeMount
	var volumes []corev1.Volume
	switch mode {
	case "istio":
		pod := podWith(t, byKind[*appsv1.Deployment](objs), "istio-proxy")
		proxy, _ := findContainer(pod.Spec.Containers, "istio-proxy")
		mounts, volumes = proxy.VolumeMounts, pod.Spec.Volumes
	case "envoy-gateway":
		d := gatewayEnvoy(t, objs)
		mounts = d.Container.VolumeMounts
		if d.Pod != nil {
			volumes = d.Pod.Volumes
		}
	default:
		t.Fatalf("mode %s", mode)
	}
	if len(mounts) == 0 {
		return nil, nil
	}
	if len(mounts) != 1 {
		t.Fatalf("%s: %d mounts in the proxy, want the filter's only", mode, len(mounts))
	}
	m := mounts[0]
	i := slices.IndexFunc(volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
	if i < 0 {
		t.Fatalf("%s: the proxy mounts %s, which is no volume of its pod", mode, m.Name)
	}
	return &m, &volumes[i]
}

// checkMeshModule: with the whole filter, the proxy has the filter image
// mounted read-only where controlplane render tells Envoy the module is;
// with the mesh's Wasm API (which fetches the image) nothing is mounted.
func checkMeshModule(t *testing.T, objs []object, mode string, wasmAPI bool) {
	t.Helper()
	m, v := meshModule(t, objs, mode)
	if wasmAPI {
		if m != nil {
			t.Errorf("%s with the mesh's Wasm API: the proxy still mounts %s", mode, m.Name)
		}
		return
	}
	if m == nil {
		t.Fatalf("%s: the proxy mounts no filter module", mode)
	}
	if m.MountPath != path.Dir(xds.DefaultMeshWasmPath) || !m.ReadOnly {
		t.Errorf("%s: filter mounted at %s (read-only %v), render's module is %s", mode, m.MountPath, m.ReadOnly, xds.DefaultMeshWasmPath)
	}
	if v.Image == nil || v.Image.Reference == "" {
		t.Errorf("%s: filter volume %+v: want the filter image", mode, v.VolumeSource)
	}
}

// checkRetention: the collector is given backends.retention, as a duration
// its -retention flag takes (Go's syntax: 720h, not 30d).
func checkRetention(t *testing.T, pod *corev1.PodTemplateSpec) {
	t.Helper()
	collector, _ := findContainer(pod.Spec.Containers, "collector")
	v := argValue(collector.Args, "-retention")
	if d, err := time.ParseDuration(v); err != nil || d < 0 {
		t.Errorf("collector -retention=%q: want a duration of 0 or more (%v)", v, err)
	}
}

func argValue(args []string, flag string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v
		}
	}
	return ""
}

// TestChartRefusesValues: values that would fail at run time fail the
// install, with a message saying why.
func TestChartRefusesValues(t *testing.T) {
	ch := loadChart(t)
	for _, tc := range []struct {
		name      string
		overrides map[string]any
		want      string
	}{
		{"replicas on the embedded store", map[string]any{"app": map[string]any{"replicas": 2}}, "needs the shared backends"},
		{"unknown mode", map[string]any{"mode": "linkerd"}, `mode "linkerd"`},
		{"unknown store", map[string]any{"backends": map[string]any{"store": "postgres"}}, `backends.store "postgres"`},
		{"envoy-gateway without replay URL", map[string]any{"mode": "envoy-gateway"}, "envoyGateway.replayURL is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := renderChart(ch, "", tc.overrides)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}
