"""Example job: clean sensor readings and convert them, keyed by sensor.

Input (topic ``sensors``): ``{"tag": "sensor1", "value": 32.3, "ts": 1700000000000}``
Output (topic ``sensor-stats``): the reading plus Fahrenheit and an alert flag,
keyed by the sensor's tag.
"""

from operators import Job

job = Job("sensor-stats")
(
    job.source("sensors", value="json", timestamp=lambda r: r["ts"])
    .filter(lambda r: isinstance(r.get("value"), int | float))
    .key_by(lambda r: r["tag"])
    .map(
        lambda r: {
            "tag": r["tag"],
            "ts": r["ts"],
            "celsius": r["value"],
            "fahrenheit": round(r["value"] * 9 / 5 + 32, 1),
            "alert": r["value"] > 40,
        }
    )
    .sink("sensor-stats", value="json")
)
