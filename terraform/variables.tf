# -- where ------------------------------------------------------------------------------------------
variable "kubeconfig_path" {
  type        = string
  default     = "~/.kube/config"
  description = "Kubeconfig file of the cluster to deploy to."
}

variable "kube_context" {
  type        = string
  default     = null
  description = "Context in the kubeconfig; null uses its current context."
}

variable "namespace" {
  type        = string
  default     = "cats"
  description = "Namespace created for the Ray cluster, the KubeRay operator and the IPFS node."

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS-1123 label (lowercase letters, digits and '-', at most 63)."
  }
}

# -- Ray ------------------------------------------------------------------------------------------
variable "install_kuberay_operator" {
  type        = bool
  default     = true
  description = "Install the KubeRay operator (and its CRDs); false when the cluster already runs one."
}

variable "kuberay_version" {
  type        = string
  default     = "1.5.1"
  description = "Version of the kuberay-operator and ray-cluster Helm charts (they are released together)."

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+(-[0-9A-Za-z.]+)?$", var.kuberay_version))
    error_message = "kuberay_version must be a chart version such as 1.5.1."
  }
}

variable "cluster_name" {
  type        = string
  default     = "cats"
  description = "Name of the RayCluster; its head Service is <cluster_name>-head-svc."

  validation {
    # 63 characters for the Service name, less "-head-svc"
    condition     = can(regex("^[a-z]([-a-z0-9]{0,52}[a-z0-9])?$", var.cluster_name))
    error_message = "cluster_name must be a DNS-1123 label of at most 54 characters starting with a letter."
  }
}

variable "ray_image" {
  type        = string
  default     = "rayproject/ray:2.52.0-py311"
  description = "Image of the Ray head and workers, repository:tag. Its Ray and Python versions must match the driver's (`cats run`), and it must contain CATs unless cats_pip_requirement is set."

  validation {
    condition     = can(regex("^[^\\s:]+(:[0-9]+)?(/[^\\s:]+)*:[^\\s:/]+$", var.ray_image))
    error_message = "ray_image must be repository:tag, e.g. rayproject/ray:2.52.0-py311."
  }
}

variable "cats_pip_requirement" {
  type        = string
  default     = null
  description = "A pip requirement installed into every Ray pod before Ray starts (e.g. a wheel URL or a git+https:// URL of CATs); null when ray_image already contains CATs."

  validation {
    condition     = var.cats_pip_requirement == null || can(regex("^[^'\\s]+$", var.cats_pip_requirement))
    error_message = "cats_pip_requirement must be one requirement without spaces or single quotes."
  }
}

variable "head_cpu" {
  type        = string
  default     = "2"
  description = "CPU of the Ray head pod (request = limit). The head runs no slices: it is started with num-cpus 0."

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?m?$", var.head_cpu))
    error_message = "head_cpu must be a Kubernetes CPU quantity such as 2, 1.5 or 500m."
  }
}

variable "head_memory" {
  type        = string
  default     = "4Gi"
  description = "Memory of the Ray head pod (request = limit)."

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?([KMGTPE]i?)?$", var.head_memory))
    error_message = "head_memory must be a Kubernetes memory quantity such as 4Gi or 512Mi."
  }
}

variable "worker_cpu" {
  type        = string
  default     = "2"
  description = "CPU of each Ray worker pod (request = limit); Ray runs that many slices at once there."

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?m?$", var.worker_cpu))
    error_message = "worker_cpu must be a Kubernetes CPU quantity such as 2, 1.5 or 500m."
  }
}

variable "worker_memory" {
  type        = string
  default     = "4Gi"
  description = "Memory of each Ray worker pod (request = limit)."

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?([KMGTPE]i?)?$", var.worker_memory))
    error_message = "worker_memory must be a Kubernetes memory quantity such as 4Gi or 512Mi."
  }
}

variable "worker_replicas" {
  type        = number
  default     = 2
  description = "Ray worker pods to start with."

  validation {
    condition     = var.worker_replicas >= 0 && floor(var.worker_replicas) == var.worker_replicas
    error_message = "worker_replicas must be a whole number >= 0."
  }
}

variable "worker_min_replicas" {
  type        = number
  default     = 1
  description = "Fewest Ray worker pods the autoscaler keeps (with enable_autoscaling)."

  validation {
    condition     = var.worker_min_replicas >= 0 && floor(var.worker_min_replicas) == var.worker_min_replicas
    error_message = "worker_min_replicas must be a whole number >= 0."
  }
}

variable "worker_max_replicas" {
  type        = number
  default     = 4
  description = "Most Ray worker pods the autoscaler starts (with enable_autoscaling)."

  validation {
    condition     = var.worker_max_replicas >= 1 && floor(var.worker_max_replicas) == var.worker_max_replicas
    error_message = "worker_max_replicas must be a whole number >= 1."
  }
}

variable "enable_autoscaling" {
  type        = bool
  default     = false
  description = "Run Ray's autoscaler, which adds and removes workers between the min and max replicas as slices queue."
}

variable "store_name" {
  type        = string
  default     = "kubo"
  description = "Workers start with the Ray resource cats-store:<store_name>, which tells CATs' data locality which block store they read (here: the shared kubo node)."

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+$", var.store_name))
    error_message = "store_name may hold letters, digits, '.', '_' and '-' only."
  }
}

# -- IPFS -----------------------------------------------------------------------------------------
variable "kubo_image" {
  type        = string
  default     = "ipfs/kubo:v0.36.0"
  description = "Image of the IPFS (kubo) node that holds every block of the cluster's runs."
}

variable "kubo_storage_size" {
  type        = string
  default     = "50Gi"
  description = "Size of the IPFS node's persistent volume (its repo: blocks, pins, datastore)."

  validation {
    condition     = can(regex("^[0-9]+([KMGTPE]i?)?$", var.kubo_storage_size))
    error_message = "kubo_storage_size must be a Kubernetes storage quantity such as 50Gi."
  }
}

variable "kubo_storage_class" {
  type        = string
  default     = null
  description = "StorageClass of the IPFS node's volume; null uses the cluster's default class."
}

variable "kubo_cpu" {
  type        = string
  default     = "1"
  description = "CPU of the IPFS node (request = limit)."

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?m?$", var.kubo_cpu))
    error_message = "kubo_cpu must be a Kubernetes CPU quantity such as 1 or 500m."
  }
}

variable "kubo_memory" {
  type        = string
  default     = "2Gi"
  description = "Memory of the IPFS node (request = limit)."

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?([KMGTPE]i?)?$", var.kubo_memory))
    error_message = "kubo_memory must be a Kubernetes memory quantity such as 2Gi."
  }
}
