"""The README's microphone example: print each keyword heard until Ctrl-C (needs hark[mic])."""

from hark.client import Detection, HarkClient
from hark.client.microphone import Microphone

with HarkClient("127.0.0.1:50051") as client, Microphone() as mic:
    try:
        for item in client.stream(mic.chunks(), sample_rate=mic.sample_rate, realtime=False):
            if isinstance(item, Detection):
                print(f"{item.time_s:6.2f} s  {item.label}  {item.score:.2f}")
    except KeyboardInterrupt:
        pass
