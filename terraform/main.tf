# A KubeRay cluster whose pods all read and write blocks in the IPFS node of ipfs.tf.

locals {
  kuberay_charts = "https://ray-project.github.io/kuberay-helm/"

  ray_image = regex("^(?P<repository>.+):(?P<tag>[^:/]+)$", var.ray_image)

  # What CATs reads in every Ray pod: the store is the kubo node (see cats/cas/store/ipfs.py).
  cats_env = [{ name = "CATS_IPFS_API", value = local.ipfs_api }]

  # KubeRay runs the container command, then `&& ray start ...`; an empty list leaves the image as is.
  install_cats = var.cats_pip_requirement == null ? [] : ["pip install --quiet '${var.cats_pip_requirement}'"]

  # `ray start --resources` takes JSON, and KubeRay pastes the value into a shell command line,
  # hence the single quotes. Any positive amount works: each CATs slice asks for a token of it.
  store_resources = "'${jsonencode({ "cats-store:${var.store_name}" = 1000 })}'"
}

resource "kubernetes_namespace_v1" "cats" {
  metadata {
    name = var.namespace
    labels = {
      "app.kubernetes.io/part-of" = "cats"
    }
  }
}

resource "helm_release" "kuberay_operator" {
  count = var.install_kuberay_operator ? 1 : 0

  name       = "kuberay-operator"
  repository = local.kuberay_charts
  chart      = "kuberay-operator"
  version    = var.kuberay_version
  namespace  = kubernetes_namespace_v1.cats.metadata[0].name
}

resource "helm_release" "ray_cluster" {
  name       = var.cluster_name
  repository = local.kuberay_charts
  chart      = "ray-cluster"
  version    = var.kuberay_version
  namespace  = kubernetes_namespace_v1.cats.metadata[0].name

  values = [yamlencode({
    # names the RayCluster exactly, so its head Service is <cluster_name>-head-svc
    fullnameOverride = var.cluster_name
    image = {
      repository = local.ray_image.repository
      tag        = local.ray_image.tag
    }
    common = { containerEnv = local.cats_env }

    head = {
      enableInTreeAutoscaling = var.enable_autoscaling
      # Slices run on the workers, next to the store resource; the head only coordinates.
      rayStartParams = { "num-cpus" = "0" }
      command        = local.install_cats
      resources = {
        requests = { cpu = var.head_cpu, memory = var.head_memory }
        limits   = { cpu = var.head_cpu, memory = var.head_memory }
      }
    }

    worker = {
      groupName      = "workers"
      replicas       = var.worker_replicas
      minReplicas    = var.worker_min_replicas
      maxReplicas    = var.worker_max_replicas
      rayStartParams = { resources = local.store_resources }
      command        = local.install_cats
      resources = {
        requests = { cpu = var.worker_cpu, memory = var.worker_memory }
        limits   = { cpu = var.worker_cpu, memory = var.worker_memory }
      }
    }
  })]

  # the RayCluster CRD comes with the operator; the store should answer before the first slice
  depends_on = [helm_release.kuberay_operator, kubernetes_stateful_set_v1.kubo]

  lifecycle {
    precondition {
      condition     = var.worker_min_replicas <= var.worker_replicas && var.worker_replicas <= var.worker_max_replicas
      error_message = "worker replicas must satisfy worker_min_replicas <= worker_replicas <= worker_max_replicas."
    }
  }
}
