# The IPFS (kubo) node: the block store of every Ray pod, reached at its RPC API on port 5001.

locals {
  kubo_labels = {
    "app.kubernetes.io/name"    = "kubo"
    "app.kubernetes.io/part-of" = "cats"
  }
  kubo_ports = {
    swarm   = 4001
    api     = 5001
    gateway = 8080
  }
  ipfs_api = "http://${kubernetes_service_v1.kubo.metadata[0].name}.${kubernetes_namespace_v1.cats.metadata[0].name}.svc.cluster.local:${local.kubo_ports.api}"
}

# Headless: it governs the StatefulSet, and its name resolves straight to the one kubo pod.
resource "kubernetes_service_v1" "kubo" {
  metadata {
    name      = "kubo"
    namespace = kubernetes_namespace_v1.cats.metadata[0].name
    labels    = local.kubo_labels
  }

  spec {
    cluster_ip = "None"
    selector   = local.kubo_labels

    dynamic "port" {
      for_each = local.kubo_ports
      content {
        name        = port.key
        port        = port.value
        target_port = port.key
      }
    }
  }
}

resource "kubernetes_stateful_set_v1" "kubo" {
  metadata {
    name      = "kubo"
    namespace = kubernetes_namespace_v1.cats.metadata[0].name
    labels    = local.kubo_labels
  }

  spec {
    service_name = kubernetes_service_v1.kubo.metadata[0].name
    replicas     = 1

    selector {
      match_labels = local.kubo_labels
    }

    template {
      metadata {
        labels = local.kubo_labels
      }

      spec {
        container {
          name  = "kubo"
          image = var.kubo_image

          # The image initialises a repo on first start with this profile (no LAN discovery in a
          # data centre) and listens for RPC and gateway calls on all interfaces.
          env {
            name  = "IPFS_PROFILE"
            value = "server"
          }

          dynamic "port" {
            for_each = local.kubo_ports
            content {
              name           = port.key
              container_port = port.value
            }
          }

          port {
            name           = "swarm-udp"
            container_port = local.kubo_ports.swarm
            protocol       = "UDP"
          }

          resources {
            requests = { cpu = var.kubo_cpu, memory = var.kubo_memory }
            limits   = { cpu = var.kubo_cpu, memory = var.kubo_memory }
          }

          readiness_probe {
            tcp_socket {
              port = "api"
            }
            period_seconds = 5
          }

          volume_mount {
            name       = "ipfs-repo"
            mount_path = "/data/ipfs"
          }
        }
      }
    }

    volume_claim_template {
      metadata {
        name = "ipfs-repo"
      }
      spec {
        access_modes       = ["ReadWriteOnce"]
        storage_class_name = var.kubo_storage_class
        resources {
          requests = { storage = var.kubo_storage_size }
        }
      }
    }
  }
}

# The RPC API is the node's admin interface: only pods of this namespace may call it (on clusters
# whose network plugin enforces policies). The swarm port stays open to other IPFS peers.
resource "kubernetes_network_policy_v1" "kubo" {
  metadata {
    name      = "kubo"
    namespace = kubernetes_namespace_v1.cats.metadata[0].name
  }

  spec {
    pod_selector {
      match_labels = local.kubo_labels
    }
    policy_types = ["Ingress"]

    ingress {
      from {
        pod_selector {}
      }
      port {
        port     = local.kubo_ports.api
        protocol = "TCP"
      }
      port {
        port     = local.kubo_ports.gateway
        protocol = "TCP"
      }
    }

    ingress {
      port {
        port     = local.kubo_ports.swarm
        protocol = "TCP"
      }
      port {
        port     = local.kubo_ports.swarm
        protocol = "UDP"
      }
    }
  }
}
