/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/*
 * Input to bindgen (uapi/build.rs). The headers come from uapi/include, which is exactly what
 * `make headers_install` exports from the patched tree (scripts/build-kernel.sh checks that).
 *
 * bindgen does not expand function-like macros such as _IOW(), so the ioctl request numbers
 * are restated as enumerators here: clang evaluates them from the header's own definitions, so
 * no number is ever written down twice.
 */
#include <linux/kvm.h>

enum vtlkit_ioctl {
	VTLKIT_KVM_SET_APIC_GROUP = KVM_SET_APIC_GROUP,
	VTLKIT_KVM_GET_APIC_GROUP = KVM_GET_APIC_GROUP,
	VTLKIT_KVM_SET_EVENT_NOTIFY = KVM_SET_EVENT_NOTIFY,
	VTLKIT_KVM_GET_EVENT_NOTIFY = KVM_GET_EVENT_NOTIFY,
	VTLKIT_KVM_SET_VTL_PROTECTION = KVM_SET_VTL_PROTECTION,
	VTLKIT_KVM_GET_VTL_PROTECTION = KVM_GET_VTL_PROTECTION,
	/* Stock ioctls that kvm-ioctls does not wrap and kvm-bindings does not number. */
	VTLKIT_KVM_GET_STATS_FD = KVM_GET_STATS_FD,
	VTLKIT_KVM_GET_SUPPORTED_HV_CPUID = KVM_GET_SUPPORTED_HV_CPUID,
};

/*
 * kvm_run's KVM_EXIT_MEMORY_FAULT arm is an anonymous struct, which bindgen would name by its
 * position in the union; this gives the series' layout (with `gva`) a stable name.
 */
typedef __typeof__(((struct kvm_run *)0)->memory_fault) vtlkit_memory_fault;
