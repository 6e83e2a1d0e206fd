"""The broker seam: every Kafka client a Sluice process makes, and the broker's profile.

Services make their producers, consumers and topics through `Broker` and never build an
aiokafka client themselves. `SLUICE_BROKER` picks the profile (`profiles.PROFILES`):
`tansu`, the embedded broker of `sluice up`, or `kafka` for Apache Kafka and Redpanda.
The embedded broker's workarounds (`broker.tansu`) are installed only by its profile.
"""

from broker.clients import Broker
from broker.profiles import PROFILES, Profile
from broker.settings import SluiceSettings

__all__ = ["PROFILES", "Broker", "Profile", "SluiceSettings"]
